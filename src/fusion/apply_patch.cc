// ApplyPatch (apply_patch.h): rebuilds a fused checkpoint from the base and
// a patch, after checking that the patch was made for this base (header and
// sampled data fingerprints, every patched tensor's shape and dtype) and
// that the output plan is safe. Leaves the process's allocator and thread
// pools alone: the binary chooses them (tailorctl apply-patch picks the
// streaming allocator, util/memory.h).

#include "fusion/apply_patch.h"

#include <ATen/ATen.h>

#include <memory>

#include "absl/strings/str_cat.h"
#include "fusion/fusion_run_support.h"
#include "fusion/output_plan.h"
#include "fusion/patch.h"
#include "fusion/patch_stream.h"
#include "io/checkpoint_writer.h"
#include "io/open_checkpoint.h"
#include "io/tensor_convert.h"
#include "util/file_util.h"
#include "util/quote.h"
#include "util/status_macros.h"
#include "util/torch_status.h"

namespace tailor {

using fusion_internal::AddInputFiles;
using fusion_internal::CanonicalOr;
using fusion_internal::CleanStaleStaging;
using fusion_internal::DataFingerprints;
using fusion_internal::Fingerprints;

absl::Status ApplyPatch(const std::string& pretrained_uri,
                        const std::string& patch_uri,
                        const std::string& output_uri, bool overwrite,
                        const UriResolver& resolver,
                        int64_t stream_chunk_elements) {
  return CatchTorch("apply-patch", [&]() -> absl::Status {
    TAILOR_ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> base,
                            OpenCheckpointUri(pretrained_uri, resolver));
    TAILOR_ASSIGN_OR_RETURN(std::string patch_path,
                            resolver.ResolveExisting(patch_uri));
    Checkpoint::Options open;
    open.resolver = &resolver;
    TAILOR_ASSIGN_OR_RETURN(std::unique_ptr<PatchFile> patch,
                            PatchFile::Open(patch_path, open));
    // The patch records the base it was made for, by content: header and
    // sampled data fingerprints. Patches from before issue #17 point 3
    // also name its URI (shown, never compared); newer ones do not.
    auto made_for = [](const nlohmann::json& source) -> std::string {
      const auto uri = source.find("uri");
      if (uri == source.end() || !uri->is_string()) return "";
      return absl::StrCat(" (", Quote(uri->get<std::string>()), ")");
    };
    TAILOR_ASSIGN_OR_RETURN(nlohmann::json base_fp, Fingerprints(*base));
    for (const auto& source : patch->sources()) {
      if (source.value("role", "") == "pretrained" &&
          source.contains("files") && source["files"] != base_fp) {
        return absl::FailedPreconditionError(absl::StrCat(
            patch_path, " was made for a different pre-trained checkpoint",
            made_for(source), ": its header fingerprints differ from ",
            pretrained_uri));
      }
    }
    // ... and samples of its values (patches written before data_samples
    // existed are checked by header only).
    TAILOR_ASSIGN_OR_RETURN(nlohmann::json base_data, DataFingerprints(*base));
    for (const auto& source : patch->sources()) {
      if (source.value("role", "") == "pretrained" &&
          source.contains("data_samples") &&
          source["data_samples"] != base_data) {
        return absl::FailedPreconditionError(absl::StrCat(
            patch_path, " was made for a different pre-trained checkpoint",
            made_for(source),
            ": the layout matches but sampled tensor data differ from ",
            pretrained_uri));
      }
    }
    for (const PatchFile::TensorEntry& e : patch->tensors()) {
      const TensorInfo* info = base->Find(e.name);
      if (info == nullptr) {
        return absl::InvalidArgumentError(
            absl::StrCat(patch_path, ": patches tensor '", e.name, "' which ",
                         pretrained_uri, " lacks"));
      }
      if (info->shape != e.shape || info->dtype != e.base_dtype) {
        return absl::InvalidArgumentError(absl::StrCat(
            patch_path, ": tensor '", e.name, "' is ", DTypeName(e.base_dtype),
            " ", c10::str(at::IntArrayRef(e.shape)), " in the patch but ",
            DTypeName(info->dtype), " ", c10::str(at::IntArrayRef(info->shape)),
            " in the base"));
      }
    }
    // The output may not overlap the inputs, a root or a protected path.
    OutputPlan plan;
    TAILOR_ASSIGN_OR_RETURN(std::string out,
                            resolver.ResolveForWrite(output_uri));
    plan.outputs.push_back({"out", out, true});
    TAILOR_ASSIGN_OR_RETURN(std::string base_path,
                            resolver.ResolveExisting(pretrained_uri));
    plan.inputs.push_back(
        {"pretrained", base_path, resolver.PathIsDirectory(base_path)});
    plan.inputs.push_back({"patch", CanonicalOr(patch_path), false});
    AddInputFiles(*base, "pretrained", &plan);
    TAILOR_RETURN_IF_ERROR(CheckOutputPlan(plan, resolver));
    CleanStaleStaging(plan);
    CheckpointWriterOptions options;
    options.preserve_file_assignment = true;
    options.overwrite = overwrite;
    options.copy_files_from = base->directory();
    options.copy_resolver = &resolver;
    options.output_resolver = &resolver;
    TAILOR_ASSIGN_OR_RETURN(
        std::unique_ptr<CheckpointWriter> writer,
        CheckpointWriter::Create(out, base->tensors(), options));
    if (writer->out_dir() != out) {  // a symlink swapped in since resolved
      return absl::FailedPreconditionError(absl::StrCat(
          "out: the output location changed while the job started (resolved ",
          out, ", now ", writer->out_dir(), "); refusing to write there"));
    }
    for (const TensorInfo& info : base->tensors()) {
      if (patch->Find(info.name) == nullptr) {
        if (stream_chunk_elements > 0 && info.nbytes > 0) {
          // Pieces as large as a chunk of float32 elements.
          TAILOR_RETURN_IF_ERROR(StreamCopiedTensor(
              *base, info, static_cast<uint64_t>(stream_chunk_elements) * 4,
              writer.get()));
          continue;
        }
        TAILOR_ASSIGN_OR_RETURN(std::string bytes, base->ReadRaw(info.name));
        TAILOR_RETURN_IF_ERROR(writer->WriteRaw(info.name, bytes));
        continue;
      }
      if (stream_chunk_elements > 0 && info.numel > 0 &&
          ToScalarType(info.dtype).has_value()) {
        TAILOR_RETURN_IF_ERROR(StreamPatchedTensor(
            *base, info, *patch, stream_chunk_elements, writer.get()));
        continue;
      }
      TAILOR_ASSIGN_OR_RETURN(at::Tensor pre, base->Read(info.name));
      TAILOR_ASSIGN_OR_RETURN(auto packed, patch->LoadPacked(info.name));
      TAILOR_RETURN_IF_ERROR(writer->Write(
          info.name, FuseTensor(pre, packed.first, packed.second)));
    }
    return writer->Commit();
  });
}

}  // namespace tailor
