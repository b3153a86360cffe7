#include "testing/test_util.h"

#include <ATen/ATen.h>
#include <stdlib.h>
#include <sys/wait.h>

#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "gtest/gtest.h"
#include "util/file_util.h"

namespace tailor::testing {

namespace {

std::string DTypeNameOf(at::ScalarType t) {
  switch (t) {
    case at::kBool:
      return "BOOL";
    case at::kByte:
      return "U8";
    case at::kChar:
      return "I8";
    case at::kShort:
      return "I16";
    case at::kInt:
      return "I32";
    case at::kLong:
      return "I64";
    case at::kHalf:
      return "F16";
    case at::kBFloat16:
      return "BF16";
    case at::kFloat:
      return "F32";
    case at::kDouble:
      return "F64";
    default:
      throw std::runtime_error("no safetensors dtype");
  }
}

std::string JsonEscape(absl::string_view s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      out += absl::StrFormat("\\u%04x", c);
    } else {
      out += c;
    }
  }
  return out;
}

}  // namespace

RawTensor ToRaw(const std::string& name, const at::Tensor& tensor) {
  at::Tensor t = tensor.contiguous().cpu();
  RawTensor raw;
  raw.name = name;
  raw.dtype = DTypeNameOf(t.scalar_type());
  raw.shape = t.sizes().vec();
  raw.data.assign(static_cast<const char*>(t.data_ptr()),
                  static_cast<size_t>(t.numel()) * t.element_size());
  return raw;
}

std::string AssembleSafetensors(absl::string_view header,
                                absl::string_view data) {
  std::string out(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  out.append(header.data(), header.size());
  out.append(data.data(), data.size());
  return out;
}

std::string SerializeSafetensors(
    const std::vector<RawTensor>& tensors,
    const std::map<std::string, std::string>& metadata) {
  std::string header = "{";
  bool first = true;
  if (!metadata.empty()) {
    header += "\"__metadata__\":{";
    bool f = true;
    for (const auto& [k, v] : metadata) {
      absl::StrAppend(&header, f ? "" : ",", "\"", JsonEscape(k), "\":\"",
                      JsonEscape(v), "\"");
      f = false;
    }
    header += "}";
    first = false;
  }
  std::string data;
  for (const RawTensor& t : tensors) {
    std::string shape;
    for (size_t i = 0; i < t.shape.size(); ++i) {
      absl::StrAppend(&shape, i ? "," : "", t.shape[i]);
    }
    absl::StrAppend(&header, first ? "" : ",", "\"", JsonEscape(t.name),
                    "\":{\"dtype\":\"", t.dtype, "\",\"shape\":[", shape,
                    "],\"data_offsets\":[", data.size(), ",",
                    data.size() + t.data.size(), "]}");
    data += t.data;
    first = false;
  }
  header += "}";
  while (header.size() % 8 != 0) header += ' ';
  return AssembleSafetensors(header, data);
}

void WriteFileOrDie(const std::string& path, absl::string_view bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) throw std::runtime_error("cannot write " + path);
}

std::string ReadFileOrDie(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void WriteShardedCheckpoint(const std::string& dir,
                            const std::vector<std::vector<RawTensor>>& shards) {
  std::string weight_map;
  uint64_t total = 0;
  for (size_t i = 0; i < shards.size(); ++i) {
    std::string shard =
        absl::StrFormat("model-%05d-of-%05d.safetensors", i + 1, shards.size());
    WriteFileOrDie(JoinPath(dir, shard), SerializeSafetensors(shards[i]));
    for (const RawTensor& t : shards[i]) {
      absl::StrAppend(&weight_map, weight_map.empty() ? "" : ",\n", "    \"",
                      JsonEscape(t.name), "\": \"", shard, "\"");
      total += t.data.size();
    }
  }
  WriteFileOrDie(
      JoinPath(dir, "model.safetensors.index.json"),
      absl::StrCat("{\n  \"metadata\": {\"total_size\": ", total,
                   "},\n  \"weight_map\": {\n", weight_map, "\n  }\n}\n"));
}

namespace {

std::string ShellQuote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

}  // namespace

CliResult RunTailorctl(const std::vector<std::string>& args,
                       const std::string& scratch_dir) {
  const char* bin = std::getenv("TAILORCTL");
  if (bin == nullptr) {
    throw std::runtime_error(
        "TAILORCTL is not set (run the test through ctest)");
  }
  std::string cmd = ShellQuote(bin);
  for (const auto& a : args) absl::StrAppend(&cmd, " ", ShellQuote(a));
  const std::string out = JoinPath(scratch_dir, ".tailorctl.stdout");
  const std::string err = JoinPath(scratch_dir, ".tailorctl.stderr");
  absl::StrAppend(&cmd, " >", ShellQuote(out), " 2>", ShellQuote(err));
  const int status = std::system(cmd.c_str());
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, ReadFileOrDie(out),
          ReadFileOrDie(err)};
}

bool BitEqual(const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() != b.scalar_type() || a.sizes() != b.sizes()) {
    return false;
  }
  if (a.numel() == 0) return true;  // memcmp may not see null pointers
  at::Tensor ca = a.contiguous().cpu();
  at::Tensor cb = b.contiguous().cpu();
  return std::memcmp(ca.data_ptr(), cb.data_ptr(),
                     static_cast<size_t>(ca.numel()) * ca.element_size()) == 0;
}

void ExpectSameFiles(const std::string& a, const std::string& b) {
  auto na = ListDirectory(a);
  auto nb = ListDirectory(b);
  ASSERT_TRUE(na.ok() && nb.ok());
  ASSERT_EQ(*na, *nb);
  for (const std::string& n : *na) {
    EXPECT_EQ(ReadFileOrDie(JoinPath(a, n)), ReadFileOrDie(JoinPath(b, n)))
        << n;
  }
}

nlohmann::json WithoutRunFacts(nlohmann::json j) {
  if (j.is_object()) {
    j.erase("seconds");
    j.erase("resumed_tensors");
    j.erase("device");
    for (auto& [k, v] : j.items()) v = WithoutRunFacts(v);
  } else if (j.is_array()) {
    for (auto& v : j) v = WithoutRunFacts(v);
  }
  return j;
}

void WriteBf16TwoShardCheckpoint(
    const std::string& dir, const std::map<std::string, at::Tensor>& tensors) {
  std::vector<RawTensor> a, b;
  for (const auto& [name, w] : tensors) {
    (absl::StrContains(name, "mlp") ? b : a)
        .push_back(ToRaw(name, w.to(at::kBFloat16)));
  }
  b.push_back(ToRaw("model.position_ids", at::arange(8, at::kLong)));
  WriteShardedCheckpoint(dir, {a, b});
}

}  // namespace tailor::testing
