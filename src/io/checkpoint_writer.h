#ifndef TAILOR_IO_CHECKPOINT_WRITER_H_
#define TAILOR_IO_CHECKPOINT_WRITER_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "io/tensor_source.h"
#include "storage/uri_resolver.h"
#include "util/file_util.h"
#include "util/staged_output.h"

namespace tailor {

struct CheckpointWriterOptions {
  // Shard byte budget, as Hugging Face's `max_shard_size` ("5GB" = 5e9
  // bytes): tensors are packed in name order, and a shard is closed before a
  // tensor that would push it past the budget (a tensor larger than the
  // budget gets a shard of its own). One shard is written as
  // model.safetensors with no index, several as
  // model-0000i-of-0000n.safetensors plus model.safetensors.index.json.
  uint64_t max_shard_bytes = 5'000'000'000;
  // Instead of the budget, keep the layout's own file assignment
  // (TensorInfo::file) and file names: "the same layout as the base".
  bool preserve_file_assignment = false;
  // Replace an existing output directory (swapped in atomically).
  bool overwrite = false;
  // `__metadata__` of every shard. Hugging Face loaders expect format=pt.
  std::map<std::string, std::string> metadata = {{"format", "pt"}};
  // When set, the non-tensor files of this directory (config.json, tokenizer
  // files, generation_config.json, ...) are copied: top-level regular files
  // (symlinks followed, as in the Hugging Face cache) except weights
  // (*.safetensors, *.index.json, pickle/h5/msgpack/gguf/onnx weights) and
  // hidden files.
  std::string copy_files_from;
  // When set (a job's resolver; not owned), each file copied from
  // copy_files_from must canonicalise inside one of its allowed roots and is
  // opened beneath that root (issue #14 point 7): a file there symlinked out
  // of the roots (a tokenizer.json -> /etc/shadow), even one swapped in
  // while the job ran, is PERMISSION_DENIED naming it -- at Create() and
  // again when it is copied -- rather than copied into the output. Links
  // that stay inside a root (a Hugging Face cache's blobs) are followed.
  const UriResolver* copy_resolver = nullptr;
  // Needed when `out_dir` is a remote URI (issue #16 point 3; not owned):
  // the store and the local scratch directory the output is staged in
  // (StagedOutput::CreateRemote).
  const UriResolver* output_resolver = nullptr;
};

// Writes a Hugging Face-compatible safetensors checkpoint whose tensor names,
// shapes and dtypes are fixed up front by `layout` (usually the reference
// checkpoint's tensors()).
//
// Because every size is known up front, each file's header is final from the
// start and tensors may be written in any order, each exactly once, straight
// to their offsets: memory stays at one tensor. Within a file, data is
// ordered by (element size descending, name), so every tensor is aligned to
// its element size; the header is space-padded to a multiple of 8.
//
// Atomicity: everything is written into a hidden staging directory next to
// `out_dir` (a StagedOutput: ".<name>.tailor-stage-<pid>-<k>", created and
// filled through its parent's descriptor, opened without following
// symlinks); Commit() fsyncs every file, then the staging directory, renames
// it to `out_dir` (with overwrite: atomically exchanged with the old one,
// which is then removed) and fsyncs the parent. A crash at any point leaves
// either no `out_dir` (or the old one) or the complete new one, plus a stale
// staging directory that RemoveStaleStaging() recognises. A writer destroyed
// without Commit() removes its staging directory. If the parent directory
// was replaced (or a component of its path swapped for a symlink) after
// Create(), Commit() refuses (FAILED_PRECONDITION) rather than publish
// anywhere else.
//
// Stage() + staged() let a caller publish several outputs as one unit
// (PublishAll); Commit() is Stage() and publishing this one alone.
//
// Output is deterministic: identical inputs give byte-identical files.
//
// Thread-safety: Write/WriteRaw and tensor streams may run concurrently for
// different tensors (one stream is used by one thread at a time); Commit()
// must not overlap them.
class CheckpointWriter {
 public:
  static absl::StatusOr<std::unique_ptr<CheckpointWriter>> Create(
      const std::string& out_dir, std::vector<TensorInfo> layout,
      const CheckpointWriterOptions& options);
  ~CheckpointWriter();

  // Converts `tensor` to the layout's dtype for `name` (shape must match
  // exactly) and writes it.
  absl::Status Write(absl::string_view name, const at::Tensor& tensor);
  // Writes stored bytes as they are (for dtypes LibTorch lacks, or
  // pass-through copies); the size must equal the layout's nbytes.
  absl::Status WriteRaw(absl::string_view name, absl::string_view bytes);
  // Writing one tensor in pieces, so that memory stays at a chunk rather
  // than the tensor: BeginTensor() claims `name` (as WriteRaw would: once
  // per tensor), each WriteChunk() writes the next bytes in order, and
  // EndTensor() checks exactly the layout's nbytes came. A tensor begun but
  // not ended (an error midway) makes Stage() refuse.
  class TensorStream {
   public:
    TensorStream() = default;
    uint64_t written() const { return written_; }

   private:
    friend class CheckpointWriter;
    const void* slot_ = nullptr;
    uint64_t written_ = 0;
  };
  absl::StatusOr<TensorStream> BeginTensor(absl::string_view name);
  absl::Status WriteChunk(TensorStream* stream, absl::string_view bytes);
  absl::Status EndTensor(TensorStream* stream);
  // Publishes the checkpoint. FAILED_PRECONDITION if any tensor is missing.
  absl::Status Commit();
  // Everything Commit() does short of the rename: checks every tensor was
  // written, fsyncs, writes the index and the copied files. Then publish
  // staged() (alone or with other outputs through PublishAll()).
  absl::Status Stage();
  StagedOutput* staged() const { return staged_.get(); }
  // The canonical output directory (its parent canonicalised at Create()).
  const std::string& out_dir() const { return out_dir_; }

  // The file each tensor goes to (relative to out_dir), known from Create().
  const std::vector<std::string>& file_names() const { return file_names_; }

 private:
  struct Slot {
    TensorInfo info;
    size_t file = 0;
    uint64_t offset = 0;  // absolute offset in its file
  };
  struct OutFile {
    std::string name;
    ScopedFd fd;
    uint64_t size = 0;
  };

  CheckpointWriter() = default;
  absl::StatusOr<const Slot*> Claim(absl::string_view name, uint64_t nbytes);
  absl::Status Plan(const CheckpointWriterOptions& options);
  absl::Status WriteIndex();
  // The files CopyNonTensorFiles() copies: (name, path).
  absl::StatusOr<std::vector<std::pair<std::string, std::string>>> FilesToCopy()
      const;
  absl::Status CopyNonTensorFiles();
  void MarkFailed();

  std::unique_ptr<StagedOutput> staged_;
  std::string out_dir_;
  std::string staging_dir_;  // for messages
  CheckpointWriterOptions options_;
  std::vector<Slot> slots_;  // sorted by name
  std::vector<OutFile> files_;
  std::vector<std::string> file_names_;
  bool committed_ = false;
  bool staged_done_ = false;

  absl::Mutex mu_;
  // Per slot: written (or being written). Guarded so two writers of one name
  // are caught.
  std::vector<bool> claimed_ ABSL_GUARDED_BY(mu_);
  // Per slot: begun by BeginTensor() and not yet ended.
  std::vector<bool> partial_ ABSL_GUARDED_BY(mu_);
  // A write failed midway: the output is incomplete and Commit() refuses.
  bool failed_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace tailor

#endif  // TAILOR_IO_CHECKPOINT_WRITER_H_
