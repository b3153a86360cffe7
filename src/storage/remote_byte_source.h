#ifndef TAILOR_STORAGE_REMOTE_BYTE_SOURCE_H_
#define TAILOR_STORAGE_REMOTE_BYTE_SOURCE_H_

// A remote object read as a ByteSource (issue #16 point 2): ranged reads
// conditional on the ETag seen when it was opened, through a bounded
// read-ahead window, never the whole object in memory. Torch-free.

#include <cstdint>
#include <memory>

#include "io/byte_source.h"
#include "storage/object_store.h"

namespace tailor {

// The largest read-ahead window (and default): small reads (a header, a
// small tensor) are served from one ranged GET of up to this many bytes;
// a read larger than the window goes to the store directly.
inline constexpr uint64_t kRemoteReadAheadBytes = 16ull << 20;

// `info` is what store->Stat(uri) returned; the source's size is info.size.
// `read_ahead` is clamped to [0, kRemoteReadAheadBytes * 4].
std::unique_ptr<ByteSource> NewRemoteByteSource(
    std::shared_ptr<ObjectStore> store, ObjectUri uri, ObjectInfo info,
    uint64_t read_ahead = kRemoteReadAheadBytes);

}  // namespace tailor

#endif  // TAILOR_STORAGE_REMOTE_BYTE_SOURCE_H_
