#ifndef TAILOR_UTIL_SHA256_H_
#define TAILOR_UTIL_SHA256_H_

#include <memory>
#include <string>

#include "absl/strings/string_view.h"

struct evp_md_ctx_st;

namespace tailor {

// Incremental SHA-256 (OpenSSL EVP): Update any number of times, then
// FinalHex once. Not thread-safe; movable, not copyable.
class Sha256 {
 public:
  Sha256();
  Sha256(Sha256&&) noexcept;
  Sha256& operator=(Sha256&&) noexcept;
  ~Sha256();

  void Update(absl::string_view bytes);
  // The digest of everything passed to Update, as 64 lower-case hex digits.
  // The object must not be used afterwards.
  std::string FinalHex();

 private:
  struct CtxFree {
    void operator()(evp_md_ctx_st* ctx) const;
  };
  std::unique_ptr<evp_md_ctx_st, CtxFree> ctx_;
};

// sha256 of `bytes` as 64 lower-case hex digits.
std::string Sha256Hex(absl::string_view bytes);

}  // namespace tailor

#endif  // TAILOR_UTIL_SHA256_H_
