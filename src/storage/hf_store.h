#ifndef TAILOR_STORAGE_HF_STORE_H_
#define TAILOR_STORAGE_HF_STORE_H_

// hf://org/repo[@rev]/path on a Hugging Face Hub-compatible endpoint
// (issue #16 point 1), read-only. Torch-free (tailor_remote).
//
//   objects  {endpoint}/{org}/{repo}/resolve/{rev}/{path} (rev and path
//            percent-encoded; redirects, e.g. to a CDN, followed, bounded)
//   List     {endpoint}/api/models/{org}/{repo}/tree/{rev}[/{dir}]
//            ?recursive=1 (JSON; files only; "Link: <...>; rel=\"next\""
//            pages followed while they stay on the endpoint)
//   token    "Authorization: Bearer {HF_TOKEN}" on requests to the
//            endpoint; libcurl drops it on a redirect to another host (or
//            port or scheme), so a CDN never sees it.

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "storage/https_store.h"

namespace tailor {

class HfStore : public HttpsStore {
 public:
  // `endpoint`: scheme://host[:port] (checked, e.g. CheckEndpointUrl);
  // `token` may be empty (public repositories).
  HfStore(std::shared_ptr<HttpClient> http, std::string endpoint,
          std::string token)
      : HttpsStore(std::move(http)),
        endpoint_(std::move(endpoint)),
        token_(std::move(token)) {}

  absl::StatusOr<std::string> UrlFor(const ObjectUri& uri) const override;
  absl::StatusOr<std::vector<ObjectUri>> List(const ObjectUri& prefix) override;

 protected:
  std::vector<std::pair<std::string, std::string>> AuthHeaders() const override;

 private:
  const std::string endpoint_;
  const std::string token_;  // secret
};

}  // namespace tailor

#endif  // TAILOR_STORAGE_HF_STORE_H_
