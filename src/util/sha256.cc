#include "util/sha256.h"

#include <openssl/evp.h>

namespace tailor {

std::string Sha256Hex(absl::string_view bytes) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int digest_size = 0;
  // EVP_Digest with sha256 fails only on allocation failure.
  if (EVP_Digest(bytes.data(), bytes.size(), digest, &digest_size, EVP_sha256(),
                 nullptr) != 1) {
    abort();
  }
  static constexpr char kHex[] = "0123456789abcdef";
  std::string hex;
  hex.reserve(2 * digest_size);
  for (unsigned int i = 0; i < digest_size; ++i) {
    hex += kHex[digest[i] >> 4];
    hex += kHex[digest[i] & 0xf];
  }
  return hex;
}

}  // namespace tailor
