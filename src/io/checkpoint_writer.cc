#include "io/checkpoint_writer.h"

#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <numeric>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "io/checkpoint.h"
#include "io/safetensors_header.h"
#include "io/tensor_convert.h"
#include "nlohmann/json.hpp"
#include "util/errno_status.h"
#include "util/status_macros.h"

namespace tailor {
namespace {

bool IsWeightFileName(absl::string_view name) {
  for (absl::string_view ext :
       {".safetensors", ".index.json", ".bin", ".pt", ".pth", ".ckpt", ".pkl",
        ".pickle", ".h5", ".msgpack", ".gguf", ".onnx"}) {
    if (absl::EndsWithIgnoreCase(name, ext)) return true;
  }
  return false;
}

// Creates a new entry `name` of directory `dirfd` (O_EXCL, never following
// a symlink there; named `label`), has `fill` write it through its fd, and
// fsyncs it.
absl::Status WriteNewFileAt(int dirfd, const std::string& name,
                            absl::string_view label,
                            absl::FunctionRef<absl::Status(int fd)> fill) {
  const int fd =
      ::openat(dirfd, name.c_str(),
               O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoError(errno, absl::StrCat("create ", label));
  ScopedFd out(fd);
  TAILOR_RETURN_IF_ERROR(fill(fd));
  if (::fsync(fd) != 0) return ErrnoError(errno, absl::StrCat("fsync ", label));
  return absl::OkStatus();
}

// Copies the open regular file `in` (named `from` in messages) into a new
// entry `name` of directory `dirfd` (WriteNewFileAt).
absl::Status CopyOpenFileAt(int in, absl::string_view from, int dirfd,
                            const std::string& name, absl::string_view label) {
  return WriteNewFileAt(dirfd, name, label, [&](int fd) -> absl::Status {
    std::vector<char> buffer(1 << 20);
    uint64_t offset = 0;
    for (;;) {
      const ssize_t n =
          ::pread(in, buffer.data(), buffer.size(), static_cast<off_t>(offset));
      if (n < 0) {
        if (errno == EINTR) continue;
        return ErrnoError(errno, absl::StrCat("read ", from));
      }
      if (n == 0) return absl::OkStatus();
      TAILOR_RETURN_IF_ERROR(PWriteFully(
          fd, buffer.data(), static_cast<size_t>(n), offset, label));
      offset += static_cast<uint64_t>(n);
    }
  });
}

// The same from any byte source (a remote object), in 8 MiB reads.
absl::Status CopySourceAt(const ByteSource& in, int dirfd,
                          const std::string& name, absl::string_view label) {
  return WriteNewFileAt(dirfd, name, label, [&](int fd) -> absl::Status {
    std::string buffer;
    for (uint64_t offset = 0; offset < in.size(); offset += buffer.size()) {
      buffer.resize(std::min<uint64_t>(8 << 20, in.size() - offset));
      TAILOR_RETURN_IF_ERROR(in.ReadAt(offset, buffer.size(), buffer.data()));
      TAILOR_RETURN_IF_ERROR(
          PWriteFully(fd, buffer.data(), buffer.size(), offset, label));
    }
    return absl::OkStatus();
  });
}

}  // namespace

absl::StatusOr<std::unique_ptr<CheckpointWriter>> CheckpointWriter::Create(
    const std::string& out_dir, std::vector<TensorInfo> layout,
    const CheckpointWriterOptions& options) {
  if (out_dir.empty()) {
    return absl::InvalidArgumentError("checkpoint writer: empty output path");
  }
  if (options.max_shard_bytes == 0) {
    return absl::InvalidArgumentError("max_shard_bytes must be positive");
  }
  std::sort(
      layout.begin(), layout.end(),
      [](const TensorInfo& a, const TensorInfo& b) { return a.name < b.name; });
  for (size_t i = 0; i < layout.size(); ++i) {
    if (i > 0 && layout[i].name == layout[i - 1].name) {
      return absl::InvalidArgumentError(absl::StrCat(
          "checkpoint writer: tensor '", layout[i].name, "' listed twice"));
    }
    if (layout[i].name.empty()) {
      return absl::InvalidArgumentError("checkpoint writer: empty tensor name");
    }
  }

  std::unique_ptr<CheckpointWriter> w(new CheckpointWriter());
  w->options_ = options;
  TAILOR_ASSIGN_OR_RETURN(
      w->staged_,
      CreateStagedOutput(out_dir, StagedOutput::Kind::kDirectory,
                         options.overwrite, options.output_resolver));
  w->out_dir_ = w->staged_->path();
  w->staging_dir_ = w->staged_->staging_path();
  for (TensorInfo& info : layout) {
    Slot slot;
    slot.info = std::move(info);
    w->slots_.push_back(std::move(slot));
  }
  {
    absl::MutexLock lock(&w->mu_);
    w->claimed_.assign(w->slots_.size(), false);
    w->partial_.assign(w->slots_.size(), false);
  }
  TAILOR_RETURN_IF_ERROR(w->Plan(options));
  // Refuse a file that cannot be copied before any tensor is written.
  TAILOR_RETURN_IF_ERROR(w->FilesToCopy().status());
  return w;
}

absl::Status CheckpointWriter::Plan(const CheckpointWriterOptions& options) {
  // 1. Assign slots to files.
  std::vector<std::vector<size_t>> members;
  if (options.preserve_file_assignment) {
    std::map<std::string, size_t> by_name;
    for (const Slot& s : slots_) {
      const std::string& f = s.info.file;
      if (f.empty() || absl::StrContains(f, '/') || f == "." || f == ".." ||
          !absl::EndsWith(f, ".safetensors")) {
        return absl::InvalidArgumentError(absl::StrCat(
            "checkpoint writer: tensor '", s.info.name, "' has file '", f,
            "', which is not a plain *.safetensors file name"));
      }
      by_name.emplace(f, 0);
    }
    for (auto& [name, index] : by_name) {
      index = file_names_.size();
      file_names_.push_back(name);
    }
    members.resize(file_names_.size());
    for (size_t i = 0; i < slots_.size(); ++i) {
      members[by_name[slots_[i].info.file]].push_back(i);
    }
    if (file_names_.empty()) file_names_.push_back(kSingleFileName);
    members.resize(file_names_.size());
  } else {
    uint64_t current = 0;
    members.emplace_back();
    for (size_t i = 0; i < slots_.size(); ++i) {
      const uint64_t n = slots_[i].info.nbytes;
      if (!members.back().empty() && current + n > options.max_shard_bytes) {
        members.emplace_back();
        current = 0;
      }
      members.back().push_back(i);
      current += n;
    }
    if (members.size() == 1) {
      file_names_.push_back(kSingleFileName);
    } else {
      for (size_t f = 0; f < members.size(); ++f) {
        file_names_.push_back(absl::StrFormat("model-%05d-of-%05d.safetensors",
                                              f + 1, members.size()));
      }
    }
  }

  // 2. Lay out each file and write its header.
  for (size_t f = 0; f < members.size(); ++f) {
    std::vector<size_t>& ids = members[f];
    std::sort(ids.begin(), ids.end(), [&](size_t a, size_t b) {
      const size_t sa = DTypeSize(slots_[a].info.dtype);
      const size_t sb = DTypeSize(slots_[b].info.dtype);
      if (sa != sb) return sa > sb;
      return slots_[a].info.name < slots_[b].info.name;
    });
    std::vector<TensorEntry> entries;
    uint64_t data_size = 0;
    for (size_t id : ids) {
      const TensorInfo& info = slots_[id].info;
      TensorEntry e;
      e.name = info.name;
      e.dtype = info.dtype;
      e.shape = info.shape;
      e.begin = data_size;
      e.end = data_size + info.nbytes;
      data_size = e.end;
      entries.push_back(std::move(e));
    }
    const std::string head =
        SerializeSafetensorsHead(options_.metadata, entries);
    OutFile out;
    out.name = file_names_[f];
    const std::string path = JoinPath(staging_dir_, out.name);
    int fd = ::openat(staged_->fd(), out.name.c_str(),
                      O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0) return ErrnoError(errno, absl::StrCat("create ", path));
    out.fd = ScopedFd(fd);
    TAILOR_RETURN_IF_ERROR(PWriteFully(fd, head.data(), head.size(), 0, path));
    const uint64_t data_offset = head.size();
    out.size = data_offset + data_size;
    // Sets the final size now: a tensor never written reads back as zeros,
    // but Commit() refuses to publish in that case anyway.
    if (::ftruncate(fd, static_cast<off_t>(out.size)) != 0) {
      return ErrnoError(errno, absl::StrCat("resize ", path));
    }
    for (size_t k = 0; k < ids.size(); ++k) {
      slots_[ids[k]].file = f;
      slots_[ids[k]].offset = data_offset + entries[k].begin;
      slots_[ids[k]].info.file = out.name;
    }
    files_.push_back(std::move(out));
  }
  return absl::OkStatus();
}

CheckpointWriter::~CheckpointWriter() {
  files_.clear();  // close descriptors before the staging directory goes
  staged_.reset();
}

void CheckpointWriter::MarkFailed() {
  absl::MutexLock lock(&mu_);
  failed_ = true;
}

absl::StatusOr<const CheckpointWriter::Slot*> CheckpointWriter::Claim(
    absl::string_view name, uint64_t nbytes) {
  auto it = std::lower_bound(
      slots_.begin(), slots_.end(), name,
      [](const Slot& s, absl::string_view n) { return s.info.name < n; });
  if (it == slots_.end() || it->info.name != name) {
    return absl::NotFoundError(absl::StrCat("checkpoint writer: tensor '", name,
                                            "' is not in the output layout"));
  }
  if (nbytes != it->info.nbytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("checkpoint writer: tensor '", name, "' has ", nbytes,
                     " bytes; the layout expects ", it->info.nbytes));
  }
  absl::MutexLock lock(&mu_);
  const size_t index = static_cast<size_t>(it - slots_.begin());
  if (claimed_[index]) {
    return absl::FailedPreconditionError(
        absl::StrCat("checkpoint writer: tensor '", name, "' written twice"));
  }
  claimed_[index] = true;
  return &*it;
}

absl::Status CheckpointWriter::Write(absl::string_view name,
                                     const at::Tensor& tensor) {
  const std::string label = absl::StrCat("output tensor '", name, "'");
  auto it = std::lower_bound(
      slots_.begin(), slots_.end(), name,
      [](const Slot& s, absl::string_view n) { return s.info.name < n; });
  if (it != slots_.end() && it->info.name == name &&
      tensor.sizes().vec() != it->info.shape) {
    return absl::InvalidArgumentError(
        absl::StrCat(label, ": shape ", c10::str(tensor.sizes()),
                     " differs from the layout's ",
                     c10::str(at::IntArrayRef(it->info.shape))));
  }
  if (it == slots_.end() || it->info.name != name) {
    return Claim(name, 0).status();  // the NOT_FOUND error
  }
  TAILOR_ASSIGN_OR_RETURN(at::Tensor stored,
                          ToStoredTensor(tensor, it->info.dtype, label));
  const uint64_t nbytes =
      static_cast<uint64_t>(stored.numel()) * stored.element_size();
  return WriteRaw(name,
                  absl::string_view(static_cast<const char*>(stored.data_ptr()),
                                    static_cast<size_t>(nbytes)));
}

absl::Status CheckpointWriter::WriteRaw(absl::string_view name,
                                        absl::string_view bytes) {
  TAILOR_ASSIGN_OR_RETURN(const Slot* slot, Claim(name, bytes.size()));
  const OutFile& file = files_[slot->file];
  absl::Status s = PWriteFully(file.fd.get(), bytes.data(), bytes.size(),
                               slot->offset, JoinPath(staging_dir_, file.name));
  if (!s.ok()) MarkFailed();
  return s;
}

absl::StatusOr<CheckpointWriter::TensorStream> CheckpointWriter::BeginTensor(
    absl::string_view name) {
  auto it = std::lower_bound(
      slots_.begin(), slots_.end(), name,
      [](const Slot& s, absl::string_view n) { return s.info.name < n; });
  const uint64_t nbytes =
      it != slots_.end() && it->info.name == name ? it->info.nbytes : 0;
  TAILOR_ASSIGN_OR_RETURN(const Slot* slot, Claim(name, nbytes));
  {
    absl::MutexLock lock(&mu_);
    partial_[static_cast<size_t>(slot - slots_.data())] = true;
  }
  TensorStream stream;
  stream.slot_ = slot;
  return stream;
}

absl::Status CheckpointWriter::WriteChunk(TensorStream* stream,
                                          absl::string_view bytes) {
  const Slot* slot = static_cast<const Slot*>(stream->slot_);
  if (slot == nullptr) {
    return absl::FailedPreconditionError(
        "checkpoint writer: chunk written to a stream never begun");
  }
  if (bytes.size() > slot->info.nbytes - stream->written_) {
    MarkFailed();
    return absl::InvalidArgumentError(
        absl::StrCat("checkpoint writer: tensor '", slot->info.name,
                     "' streamed past its ", slot->info.nbytes, " bytes"));
  }
  const OutFile& file = files_[slot->file];
  absl::Status s = PWriteFully(file.fd.get(), bytes.data(), bytes.size(),
                               slot->offset + stream->written_,
                               JoinPath(staging_dir_, file.name));
  if (!s.ok()) {
    MarkFailed();
    return s;
  }
  stream->written_ += bytes.size();
  return absl::OkStatus();
}

absl::Status CheckpointWriter::EndTensor(TensorStream* stream) {
  const Slot* slot = static_cast<const Slot*>(stream->slot_);
  if (slot == nullptr) {
    return absl::FailedPreconditionError(
        "checkpoint writer: ending a stream never begun");
  }
  if (stream->written_ != slot->info.nbytes) {
    MarkFailed();
    return absl::InvalidArgumentError(absl::StrCat(
        "checkpoint writer: tensor '", slot->info.name, "' got ",
        stream->written_, " of its ", slot->info.nbytes, " bytes"));
  }
  absl::MutexLock lock(&mu_);
  partial_[static_cast<size_t>(slot - slots_.data())] = false;
  stream->slot_ = nullptr;
  return absl::OkStatus();
}

absl::Status CheckpointWriter::WriteIndex() {
  uint64_t total = 0;
  nlohmann::json weight_map = nlohmann::json::object();
  for (const Slot& s : slots_) {
    total += s.info.nbytes;
    weight_map[s.info.name] = file_names_[s.file];
  }
  nlohmann::json index = {{"metadata", {{"total_size", total}}},
                          {"weight_map", weight_map}};
  return WriteFileAt(staged_->fd(), kIndexFileName, index.dump(2) + "\n",
                     JoinPath(staging_dir_, kIndexFileName));
}

absl::StatusOr<std::vector<std::pair<std::string, std::string>>>
CheckpointWriter::FilesToCopy() const {
  std::vector<std::pair<std::string, std::string>> files;
  if (options_.copy_files_from.empty()) return files;
  const UriResolver* const resolver = options_.copy_resolver;
  if (resolver == nullptr && IsRemoteUri(options_.copy_files_from)) {
    return absl::InvalidArgumentError(
        absl::StrCat(options_.copy_files_from,
                     ": copying from a remote base needs its "
                     "resolver"));
  }
  TAILOR_ASSIGN_OR_RETURN(std::vector<std::string> names,
                          resolver != nullptr
                              ? resolver->ListNames(options_.copy_files_from)
                              : ListDirectory(options_.copy_files_from));
  for (const std::string& name : names) {
    const std::string from = JoinPath(options_.copy_files_from, name);
    if (name.front() == '.' || IsWeightFileName(name) ||
        !(resolver != nullptr ? resolver->PathIsRegularFile(from)
                              : IsRegularFile(from))) {
      continue;
    }
    if (std::find(file_names_.begin(), file_names_.end(), name) !=
        file_names_.end()) {
      continue;
    }
    if (options_.copy_resolver != nullptr) {
      TAILOR_RETURN_IF_ERROR(
          options_.copy_resolver->CheckLocalPath(from).status());
    }
    files.emplace_back(name, from);
  }
  return files;
}

absl::Status CheckpointWriter::CopyNonTensorFiles() {
  TAILOR_ASSIGN_OR_RETURN(auto files, FilesToCopy());
  for (const auto& [name, from] : files) {
    const std::string label = JoinPath(staging_dir_, name);
    if (options_.copy_resolver == nullptr) {
      TAILOR_RETURN_IF_ERROR(
          CopyFileDurablyAt(from, staged_->fd(), name, label));
      continue;
    }
    // Beneath the root that holds it, whatever the path has become since.
    TAILOR_ASSIGN_OR_RETURN(const std::string canonical,
                            options_.copy_resolver->CheckLocalPath(from));
    if (IsRemoteUri(canonical)) {
      TAILOR_ASSIGN_OR_RETURN(
          std::unique_ptr<ByteSource> in,
          options_.copy_resolver->OpenSource(canonical, from));
      TAILOR_RETURN_IF_ERROR(CopySourceAt(*in, staged_->fd(), name, label));
      continue;
    }
    TAILOR_ASSIGN_OR_RETURN(
        ScopedFd in, options_.copy_resolver->OpenForRead(canonical, from));
    TAILOR_RETURN_IF_ERROR(
        CopyOpenFileAt(in.get(), from, staged_->fd(), name, label));
  }
  return absl::OkStatus();
}

absl::Status CheckpointWriter::Commit() {
  TAILOR_RETURN_IF_ERROR(Stage());
  StagedOutput* const outputs[] = {staged_.get()};
  TAILOR_RETURN_IF_ERROR(PublishAll(outputs));
  committed_ = true;
  return absl::OkStatus();
}

absl::Status CheckpointWriter::Stage() {
  if (committed_ || staged_done_) {
    return absl::FailedPreconditionError(
        "checkpoint writer: already committed");
  }
  {
    absl::MutexLock lock(&mu_);
    if (failed_) {
      return absl::FailedPreconditionError(
          "checkpoint writer: a tensor write failed; output not published");
    }
    for (size_t i = 0; i < slots_.size(); ++i) {
      if (!claimed_[i]) {
        return absl::FailedPreconditionError(
            absl::StrCat("checkpoint writer: tensor '", slots_[i].info.name,
                         "' was never written; output not published"));
      }
      if (partial_[i]) {
        return absl::FailedPreconditionError(
            absl::StrCat("checkpoint writer: tensor '", slots_[i].info.name,
                         "' was only partly written; output not published"));
      }
    }
  }
  for (OutFile& f : files_) {
    const std::string path = JoinPath(staging_dir_, f.name);
    if (::fsync(f.fd.get()) != 0) {
      return ErrnoError(errno, absl::StrCat("fsync ", path));
    }
    f.fd = ScopedFd();
  }
  // Hugging Face finds a lone file only under the name model.safetensors;
  // anything else needs the index.
  if (files_.size() > 1 || file_names_[0] != kSingleFileName) {
    TAILOR_RETURN_IF_ERROR(WriteIndex());
  }
  TAILOR_RETURN_IF_ERROR(CopyNonTensorFiles());
  if (::fsync(staged_->fd()) != 0) {
    return ErrnoError(errno, absl::StrCat("fsync ", staging_dir_));
  }
  staged_done_ = true;
  return absl::OkStatus();
}

}  // namespace tailor
