#ifndef TAILOR_STORAGE_XML_EXTRACT_H_
#define TAILOR_STORAGE_XML_EXTRACT_H_

// A small, strict, bounded extractor for the few elements the S3 client
// reads from XML responses (ListObjectsV2, CreateMultipartUpload,
// CompleteMultipartUpload, errors). Not an XML parser: it finds
// <name>text</name> (attributes on the opening tag allowed, "<name/>" is
// empty), where `text` holds no markup, and decodes the five predefined
// entities and numeric character references. Torch-free (tailor_remote).

#include <cstddef>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace tailor {

// Most elements one call returns (a ListObjectsV2 page holds <= 1000).
inline constexpr size_t kMaxXmlElements = 10000;

// The raw contents (markup included, not decoded) of every <name> element
// in `xml`, in order; nested elements of the same name are not supported
// (INVALID_ARGUMENT). INVALID_ARGUMENT for an unterminated element or more
// than kMaxXmlElements.
absl::StatusOr<std::vector<absl::string_view>> XmlElements(
    absl::string_view xml, absl::string_view name);

// The decoded text of every <name> element: its contents must hold no
// '<' (INVALID_ARGUMENT) and valid entities only.
absl::StatusOr<std::vector<std::string>> XmlTexts(absl::string_view xml,
                                                  absl::string_view name);

// The decoded text of the first <name> element, or "" when there is none.
absl::StatusOr<std::string> XmlFirstText(absl::string_view xml,
                                         absl::string_view name);

// Decodes &amp; &lt; &gt; &quot; &apos; &#NN; &#xHH; (UTF-8 out);
// anything else after '&' is INVALID_ARGUMENT.
absl::StatusOr<std::string> XmlDecodeEntities(absl::string_view text);

// Escapes & < > " ' for element text.
std::string XmlEscape(absl::string_view text);

}  // namespace tailor

#endif  // TAILOR_STORAGE_XML_EXTRACT_H_
