#include "fusion/patch.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <optional>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "fusion/patch_format.h"
#include "io/bit_packing.h"
#include "io/safetensors_header.h"
#include "util/field_error.h"
#include "util/json_util.h"
#include "util/quote.h"
#include "util/status_macros.h"
#include "util/torch_status.h"

// PatchFile (fusion/patch.h): the validated reader. The writer is
// patch_writer.cc, the bit packing io/bit_packing.h, the base fingerprints
// io/fingerprint.h.

namespace tailor {

absl::StatusOr<std::unique_ptr<PatchFile>> PatchFile::Open(
    const std::string& path, const Checkpoint::Options& options) {
  auto error = [&](absl::string_view message) {
    return FieldError(path, message);
  };
  std::unique_ptr<PatchFile> patch(new PatchFile());
  TAILOR_ASSIGN_OR_RETURN(
      patch->file_,
      OpenFormattedFile(path, options, "tailor patch", kPatchFormat));
  const SafetensorsHeader& header = patch->file_->files()[0]->header();
  const std::map<std::string, std::string>& md = header.metadata;

  auto field = [&](const std::string& key) -> absl::StatusOr<std::string> {
    auto it = md.find(key);
    if (it == md.end()) {
      return error(absl::StrCat("__metadata__ lacks ", Quote(key)));
    }
    return it->second;
  };
  auto json_field =
      [&](const std::string& key, nlohmann::json::value_t type,
          absl::string_view what) -> absl::StatusOr<nlohmann::json> {
    TAILOR_ASSIGN_OR_RETURN(std::string text, field(key));
    TAILOR_ASSIGN_OR_RETURN(
        nlohmann::json value,
        ParseJsonStrict(text,
                        absl::StrCat(path, ": __metadata__ ", Quote(key))));
    if (value.type() != type) {
      return error(
          absl::StrCat("__metadata__ ", Quote(key), " must be ", what));
    }
    return value;
  };
  TAILOR_ASSIGN_OR_RETURN(patch->method_, field("method"));
  TAILOR_ASSIGN_OR_RETURN(
      patch->knobs_,
      json_field("knobs", nlohmann::json::value_t::object, "a JSON object"));
  TAILOR_ASSIGN_OR_RETURN(
      patch->sources_,
      json_field("sources", nlohmann::json::value_t::array, "a JSON array"));
  TAILOR_ASSIGN_OR_RETURN(
      patch->tensor_metadata_,
      json_field("tensors", nlohmann::json::value_t::object, "a JSON object"));

  // Pair the stored tensors by weight.
  struct Pair {
    const ::tailor::TensorEntry* mask = nullptr;
    const ::tailor::TensorEntry* values = nullptr;
  };
  std::map<std::string, Pair> weights;
  for (const ::tailor::TensorEntry& e : header.tensors) {
    if (absl::EndsWith(e.name, kPatchMaskSuffix)) {
      weights[e.name.substr(0, e.name.size() - strlen(kPatchMaskSuffix))].mask =
          &e;
    } else if (absl::EndsWith(e.name, kPatchValuesSuffix)) {
      weights[e.name.substr(0, e.name.size() - strlen(kPatchValuesSuffix))]
          .values = &e;
    } else {
      return error(absl::StrCat("unexpected tensor ", Quote(e.name),
                                ": a patch holds only '<weight>.mask' and "
                                "'<weight>.values' tensors"));
    }
  }
  for (auto it = patch->tensor_metadata_.begin();
       it != patch->tensor_metadata_.end(); ++it) {
    if (weights.count(it.key()) == 0) {
      return error(absl::StrCat("__metadata__ tensors lists ", Quote(it.key()),
                                " but the file holds neither its .mask nor "
                                "its .values"));
    }
  }
  for (const auto& [name, pair] : weights) {
    if (pair.mask == nullptr || pair.values == nullptr) {
      return error(absl::StrCat(
          "tensor ",
          Quote(absl::StrCat(name, pair.mask == nullptr ? ".values" : ".mask")),
          " has no matching ",
          Quote(
              absl::StrCat(name, pair.mask == nullptr ? ".mask" : ".values"))));
    }
    auto md_it = patch->tensor_metadata_.find(name);
    if (md_it == patch->tensor_metadata_.end() || !md_it->is_object()) {
      return error(
          absl::StrCat("__metadata__ tensors has no object for ", Quote(name)));
    }
    const nlohmann::json& m = *md_it;
    const std::string what =
        absl::StrCat("__metadata__ tensors[", Quote(name), "]");
    TensorEntry entry;
    entry.name = name;
    auto shape = m.find("shape");
    if (shape == m.end() || !shape->is_array() ||
        shape->size() > kMaxTensorRank) {
      return error(absl::StrCat(what, ".shape must be an array of at most ",
                                kMaxTensorRank, " non-negative integers"));
    }
    for (const nlohmann::json& d : *shape) {
      // An unsigned value above INT64_MAX reads back negative: rejected too.
      if (!d.is_number_integer() || d.get<int64_t>() < 0) {
        return error(
            absl::StrCat(what, ".shape must hold non-negative integers"));
      }
      entry.shape.push_back(d.get<int64_t>());
    }
    auto dtype = m.find("dtype");
    std::optional<DType> parsed;
    if (dtype != m.end() && dtype->is_string()) {
      parsed = ParseDType(dtype->get_ref<const std::string&>());
    }
    if (!parsed.has_value()) {
      return error(
          absl::StrCat(what, ".dtype must be a safetensors dtype name"));
    }
    entry.base_dtype = *parsed;
    auto kept = m.find("kept");
    if (kept == m.end() || !kept->is_number_integer() ||
        kept->get<int64_t>() < 0) {
      return error(absl::StrCat(what, ".kept must be a non-negative integer"));
    }
    entry.kept = kept->get<int64_t>();
    std::optional<int64_t> numel = PatchShapeNumel(entry.shape);
    if (!numel.has_value()) {
      return error(absl::StrCat(what, ".shape overflows"));
    }
    const ::tailor::TensorEntry& mask = *pair.mask;
    const ::tailor::TensorEntry& values = *pair.values;
    if (mask.dtype != DType::kU8 || mask.shape.size() != 1) {
      return error(absl::StrCat("tensor ", Quote(mask.name),
                                " must be U8 1-D, is ", DTypeName(mask.dtype),
                                " of rank ", mask.shape.size()));
    }
    if (values.dtype != DType::kF32 || values.shape.size() != 1) {
      return error(absl::StrCat(
          "tensor ", Quote(values.name), " must be F32 1-D, is ",
          DTypeName(values.dtype), " of rank ", values.shape.size()));
    }
    const int64_t mask_bytes = PackedMaskBytes(*numel);
    if (mask.shape[0] != mask_bytes) {
      return error(absl::StrCat(
          "tensor ", Quote(mask.name), " has ", mask.shape[0], " bytes; shape ",
          c10::str(at::IntArrayRef(entry.shape)), " (", *numel,
          " entries) needs ceil(", *numel, " / 8) = ", mask_bytes));
    }
    if (values.shape[0] != entry.kept) {
      return error(absl::StrCat("tensor ", Quote(values.name), " has ",
                                values.shape[0], " values but ", what,
                                ".kept is ", entry.kept));
    }
    if (entry.kept > *numel) {
      return error(absl::StrCat(what, ".kept = ", entry.kept, " exceeds the ",
                                *numel, " entries"));
    }
    patch->tensors_.push_back(std::move(entry));
  }
  return patch;
}

const PatchFile::TensorEntry* PatchFile::Find(absl::string_view name) const {
  auto it = std::lower_bound(
      tensors_.begin(), tensors_.end(), name,
      [](const TensorEntry& e, absl::string_view n) { return e.name < n; });
  if (it == tensors_.end() || it->name != name) return nullptr;
  return &*it;
}

absl::StatusOr<std::pair<at::Tensor, at::Tensor>> PatchFile::LoadPacked(
    absl::string_view name) const {
  const TensorEntry* entry = Find(name);
  if (entry == nullptr) {
    return absl::NotFoundError(
        absl::StrCat(path(), ": the patch has no tensor ", Quote(name)));
  }
  const std::string label = absl::StrCat(path(), ": tensor ", Quote(name));
  ReadOptions keep;
  keep.floating_dtype = std::nullopt;
  TAILOR_ASSIGN_OR_RETURN(
      at::Tensor packed,
      file_->Read(absl::StrCat(name, kPatchMaskSuffix), keep));
  TAILOR_ASSIGN_OR_RETURN(
      at::Tensor values,
      file_->Read(absl::StrCat(name, kPatchValuesSuffix), keep));
  const int64_t n = *PatchShapeNumel(entry->shape);  // checked by Open()
  int64_t popcount = 0;
  TAILOR_ASSIGN_OR_RETURN(at::Tensor mask,
                          UnpackBits(packed, n, &popcount, label));
  if (popcount != entry->kept) {
    return absl::InvalidArgumentError(absl::StrCat(
        label, ": the mask has ", popcount, " set bits but ", entry->kept,
        " values are stored (popcount must equal kept)"));
  }
  // Refused like NaN fine-tuned weights: a NaN would reach the output.
  TAILOR_ASSIGN_OR_RETURN(
      const bool finite, CatchTorch(label, [&] {
        return static_cast<bool>(at::isfinite(values).all().item<bool>());
      }));
  if (!finite) {
    return absl::InvalidArgumentError(
        absl::StrCat(label, ": the patch values contain NaN or Inf"));
  }
  return CatchTorch(label, [&] {
    return std::make_pair(mask.reshape(entry->shape), values);
  });
}

absl::Status PatchFile::ReadMaskBytes(absl::string_view name, uint64_t offset,
                                      uint64_t length, void* buffer) const {
  if (Find(name) == nullptr) {
    return absl::NotFoundError(
        absl::StrCat(path(), ": the patch has no tensor ", Quote(name)));
  }
  return file_->ReadRawRange(absl::StrCat(name, kPatchMaskSuffix), offset,
                             length, buffer);
}

absl::Status PatchFile::ReadValues(absl::string_view name, int64_t first,
                                   int64_t count, float* buffer) const {
  if (Find(name) == nullptr) {
    return absl::NotFoundError(
        absl::StrCat(path(), ": the patch has no tensor ", Quote(name)));
  }
  if (first < 0 || count < 0) {
    return absl::OutOfRangeError(absl::StrCat(path(), ": tensor ", Quote(name),
                                              ": negative values range"));
  }
  return file_->ReadRawRange(absl::StrCat(name, kPatchValuesSuffix),
                             static_cast<uint64_t>(first) * sizeof(float),
                             static_cast<uint64_t>(count) * sizeof(float),
                             buffer);
}

absl::StatusOr<TaskDelta> PatchFile::Load(absl::string_view name) const {
  TAILOR_ASSIGN_OR_RETURN(auto packed, LoadPacked(name));
  return CatchTorch(absl::StrCat(path(), ": tensor ", Quote(name)), [&] {
    TaskDelta out;
    out.mask = packed.first;
    out.delta = at::zeros(packed.first.sizes(), at::kFloat);
    out.delta.masked_scatter_(out.mask, packed.second);
    return out;
  });
}

}  // namespace tailor
