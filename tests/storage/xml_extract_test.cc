#include "storage/xml_extract.h"

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace tailor {
namespace {

TEST(XmlExtractTest, FindsElementsAndDecodesEntities) {
  const std::string xml =
      "<?xml version=\"1.0\"?><ListBucketResult xmlns=\"x\">"
      "<Contents><Key>a &amp; b &lt;c&gt; &quot;q&quot; &apos;s&apos;</Key>"
      "<Size>1</Size></Contents>"
      "<Contents><Key>&#233;&#x2713;</Key></Contents>"
      "<Contents><Key/></Contents>"
      "<KeyCount>3</KeyCount></ListBucketResult>";
  absl::StatusOr<std::vector<absl::string_view>> contents =
      XmlElements(xml, "Contents");
  ASSERT_TRUE(contents.ok()) << contents.status();
  ASSERT_EQ(contents->size(), 3u);
  EXPECT_EQ(*XmlFirstText((*contents)[0], "Key"), "a & b <c> \"q\" 's'");
  EXPECT_EQ(*XmlFirstText((*contents)[1], "Key"), "\xC3\xA9\xE2\x9C\x93");
  EXPECT_EQ(*XmlFirstText((*contents)[2], "Key"), "");
  // <KeyCount> is not <Key>.
  absl::StatusOr<std::vector<std::string>> keys = XmlTexts(xml, "Key");
  ASSERT_TRUE(keys.ok());
  EXPECT_EQ(keys->size(), 3u);
  EXPECT_EQ(*XmlFirstText(xml, "KeyCount"), "3");
  EXPECT_EQ(*XmlFirstText(xml, "Missing"), "");
}

TEST(XmlExtractTest, RefusesMalformedInput) {
  EXPECT_FALSE(XmlElements("<Key>unterminated", "Key").ok());
  EXPECT_FALSE(XmlFirstText("<Key>unterminated", "Key").ok());
  EXPECT_FALSE(XmlElements("<Key><Key>x</Key></Key>", "Key").ok());
  EXPECT_FALSE(XmlTexts("<Key>a<b/>c</Key>", "Key").ok());
  EXPECT_FALSE(XmlFirstText("<Key>&bogus;</Key>", "Key").ok());
  EXPECT_FALSE(XmlFirstText("<Key>a & b</Key>", "Key").ok());
  EXPECT_FALSE(XmlFirstText("<Key>&#0;</Key>", "Key").ok());
  EXPECT_FALSE(XmlFirstText("<Key>&#xD800;</Key>", "Key").ok());
  EXPECT_FALSE(XmlFirstText("<Key>&#x110000;</Key>", "Key").ok());
  EXPECT_FALSE(XmlFirstText("<Key>&#12a;</Key>", "Key").ok());
}

TEST(XmlExtractTest, IsBounded) {
  std::string xml;
  for (size_t i = 0; i <= kMaxXmlElements; ++i) xml += "<K>x</K>";
  EXPECT_EQ(XmlElements(xml, "K").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(XmlExtractTest, EscapeRoundTrips) {
  const std::string text = "\"etag\" & <x> 'y'";
  EXPECT_EQ(*XmlDecodeEntities(XmlEscape(text)), text);
}

}  // namespace
}  // namespace tailor
