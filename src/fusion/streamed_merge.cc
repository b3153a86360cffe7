#include "fusion/streamed_merge.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <type_traits>
#include <utility>

#include "fusion/spider_kernel.h"
#include "fusion/streamed_bf16_loops.h"
#include "fusion/streamed_chunk_io.h"
#include "fusion/streamed_elementwise.h"
#include "fusion/streamed_top_k.h"
#include "fusion/tailor_kernel.h"
#include "fusion/top_k_window.h"
#include "util/status_macros.h"

namespace tailor {
namespace {

using streamed_internal::Bf16DeltaKeys;
using streamed_internal::Bf16OutputChunk;
using streamed_internal::ChunkReader;
using streamed_internal::Encode;
using streamed_internal::Fuse;
using streamed_internal::KeepOrZero;
using streamed_internal::NonFinite;
using streamed_internal::NonZero;
using streamed_internal::Sign;

// MinMaxScoresCpu's min-max normalisation of |D| over the whole tensor
// (tailor_kernel.cc): (x - lo) / max(hi - lo, tiny) where hi - lo > 0,
// else 0.
template <typename T>
struct MinMax {
  T lo = std::numeric_limits<T>::infinity();
  T hi = -std::numeric_limits<T>::infinity();
  T range = 0;
  bool positive = false;
  void Add(T x) {
    lo = x < lo ? x : lo;
    hi = x > hi ? x : hi;
  }
  void Finish() {
    range = hi - lo;
    positive = range > 0;
    // clamp_min(1e-300) in the kernel type (0 for float).
    range = std::max(range, static_cast<T>(1e-300));
  }
  inline T Score(T d) const {
    return positive ? (std::fabs(d) - lo) / range : T(0);
  }
};

template <typename T>
class Streamer {
  static constexpr typename StreamedTopK<T>::Key kSignBit =
      typename StreamedTopK<T>::Key{1} << (8 * sizeof(T) - 1);
  static constexpr int64_t kCountBlock = int64_t{1} << 20;
  using Key = typename StreamedTopK<T>::Key;

 public:
  Streamer(const StreamedTensor& t, const StreamedMergeOptions& o,
           const std::function<absl::Status(absl::string_view)>& write)
      : t_(t),
        o_(o),
        write_(write),
        tasks_(t.finetuned.size()),
        reader_(t),
        keys_(t.chunk),
        mask_(new bool[t.chunk]),
        fused_(t.chunk),
        out_(t.chunk * t.element_size),
        bits_(std::is_same_v<T, float> && t.stored == at::kBFloat16 &&
              tasks_ == 1) {}

  absl::StatusOr<StreamedMergeResult> Run() {
    if (o_.method == StreamedMethod::kSpider) return RunSpider();
    StreamedMergeResult result;
    const int64_t n = t_.numel;
    const bool magnitude = o_.method == StreamedMethod::kMagnitude;
    for (size_t i = 0; i < tasks_; ++i) {
      const int64_t k =
          magnitude ? KeepCount(o_.keep_ratio[i], n) : KeepCount(o_.density, n);
      // Magnitude ranks the (non-negative) scores, TIES |D_i|.
      tops_.emplace_back(n, k, /*abs=*/!magnitude);
    }
    ranges_.resize(tasks_);
    // A sample of each task's |D_i| brackets its k-th largest (TopKWindow),
    // so that pass 0 usually settles the selection.
    TAILOR_RETURN_IF_ERROR(SampleWindows());
    // Pass 0 checks every input value is finite (else FuseOne's error),
    // gathers magnitude's ranges and each window's candidates, or (no
    // window) TIES's first radix digit.
    if (bits_) {
      TAILOR_RETURN_IF_ERROR(
          ForEachBitsChunk([&](int64_t, int64_t m) -> absl::StatusOr<bool> {
            return CountFirstBits(m);
          }));
    } else {
      TAILOR_RETURN_IF_ERROR(ForEachChunk([&](int64_t m) { CountFirst(m); }));
    }
    if (magnitude) {
      for (auto& r : ranges_) r.Finish();
    }
    for (size_t i = 0; i < tasks_; ++i) {
      StreamedTopK<T>& top = tops_[i];
      if (!top.NeedsPass()) continue;
      if (windows_[i].enabled()) {
        // Settled here, or (the sample misjudged) by the radix passes from
        // the first digit.
        Key threshold;
        int64_t ties;
        if (windows_[i].Resolve(RankImage(i), &threshold, &ties)) {
          top.SetThreshold(threshold, ties);
        }
      } else if (!magnitude) {
        top.EndPass();  // pass 0 counted its first digit
      }
    }
    windows_.clear();
    while (NeedsPass()) {
      if (bits_ && !magnitude) {
        TAILOR_RETURN_IF_ERROR(
            ForEachBitsChunk([&](int64_t, int64_t m) -> absl::StatusOr<bool> {
              Key lo, hi;
              if (!DeltaKeysFromBits(m, &lo, &hi)) return false;
              tops_[0].CountKeys(keys_.data(), m);
              return true;
            }));
      } else {
        TAILOR_RETURN_IF_ERROR(ForEachChunk([&](int64_t m) { Count(m); }));
      }
      for (auto& top : tops_) {
        if (top.NeedsPass()) top.EndPass();
      }
    }
    if (magnitude) {
      for (size_t i = 0; i < tasks_; ++i) ToDeltaKeys(i);
    }
    nonfinite_kept_.assign(tasks_, false);
    if (bits_ && !reader_.delta_nonfinite(0)) {
      TAILOR_RETURN_IF_ERROR(ForEachBitsChunk(
          [&](int64_t off, int64_t m) { return OutputBits(off, m); }));
    } else {
      TAILOR_RETURN_IF_ERROR(ForEachChunk([&](int64_t m) { Output(m); }));
    }
    if (!write_status_.ok()) return write_status_;
    result.kept = kept_;
    for (const auto& top : tops_) result.task_kept.push_back(top.k());
    result.task_nonfinite_kept = nonfinite_kept_;
    return result;
  }

 private:
  // Spider() on task 0 (the others are read and checked, as FuseOne reads
  // them): SpiderKernel's three statistics passes, then the output pass.
  absl::StatusOr<StreamedMergeResult> RunSpider() {
    StreamedMergeResult result;
    SpiderKernel k(t_.numel);
    using Add = void (SpiderKernel::*)(double, double);
    for (Add add : {&SpiderKernel::AddMean, &SpiderKernel::AddDeviation,
                    &SpiderKernel::AddM}) {
      TAILOR_RETURN_IF_ERROR(ForEachChunk([&](int64_t m) {
        const T* p = reader_.pre();
        const T* d = reader_.delta(0);
        for (int64_t j = 0; j < m; ++j) {
          (k.*add)(std::fabs(p[j]), std::fabs(d[j]));
        }
      }));
      if (add == &SpiderKernel::AddMean) k.EndMean();
      if (add == &SpiderKernel::AddDeviation) k.EndDeviation();
      if (add == &SpiderKernel::AddM) k.EndM();
    }
    TAILOR_RETURN_IF_ERROR(ForEachChunk([&](int64_t m) {
      const T* p = reader_.pre();
      const T* d = reader_.delta(0);
      float* f = fused_.data();
      for (int64_t j = 0; j < m; ++j) {
        const double factor = k.Factor(std::fabs(p[j]), std::fabs(d[j]));
        const bool keep = factor > 0;
        kept_ += keep;
        f[j] = Fuse(keep, p[j], keep ? static_cast<T>(factor) * d[j] : T(0));
      }
      Encode(f, m, t_.stored, out_.data());
      write_status_ = write_(absl::string_view(
          out_.data(), static_cast<size_t>(m) * t_.element_size));
    }));
    if (!write_status_.ok()) return write_status_;
    result.kept = kept_;
    return result;
  }

  bool NeedsPass() const {
    for (const auto& top : tops_) {
      if (top.NeedsPass()) return true;
    }
    return false;
  }

  // Reads every chunk in order and hands its size to `fn`; at the first
  // chunk holding a non-finite input value, FuseOne's error for the tensor
  // (ChunkReader::NonFiniteInputError).
  template <typename Fn>
  absl::Status ForEachChunk(Fn&& fn) {
    for (int64_t off = 0; off < t_.numel && write_status_.ok();
         off += t_.chunk) {
      const int64_t m = std::min(t_.chunk, t_.numel - off);
      TAILOR_ASSIGN_OR_RETURN(bool finite, reader_.Read(off, m));
      if (!finite) return reader_.NonFiniteInputError();
      fn(m);
    }
    return absl::OkStatus();
  }

  // ForEachChunk on the stored bits (bits_): `fn(off, m)` after
  // ReadBits, returning whether every input value is finite.
  template <typename Fn>
  absl::Status ForEachBitsChunk(Fn&& fn) {
    for (int64_t off = 0; off < t_.numel && write_status_.ok();
         off += t_.chunk) {
      const int64_t m = std::min(t_.chunk, t_.numel - off);
      TAILOR_RETURN_IF_ERROR(reader_.ReadBits(off, m, 0));
      TAILOR_ASSIGN_OR_RETURN(bool finite, fn(off, m));
      if (!finite) return reader_.NonFiniteInputError();
    }
    return absl::OkStatus();
  }

  // bits_: keys_[0, m) = MagnitudeKey(ft - pre) of the chunk's stored
  // bits (decoded, subtracted, keyed and checked in one loop: ReadBf16 and
  // Keys' arithmetic), their least and greatest in *lo and *hi; marks a
  // delta that overflowed; false when an input value is not finite.
  bool DeltaKeysFromBits(int64_t m, Key* lo_out, Key* hi_out) {
    if constexpr (std::is_same_v<T, float>) {
      uint32_t bad, bad_delta;
      Bf16DeltaKeys(reader_.pre_bits(), reader_.ft_bits(), m, keys_.data(),
                    &bad, &bad_delta, lo_out, hi_out);
      if (bad_delta) reader_.set_delta_nonfinite(0);
      return bad == 0;
    }
    return false;  // unreachable: bits_ is float32 compute only
  }

  // Pass 0 on the stored bits (bits_: one task): CountFirst's work.
  bool CountFirstBits(int64_t m) {
    Key lo, hi;
    if (!DeltaKeysFromBits(m, &lo, &hi)) return false;
    const Key* k = keys_.data();
    if (o_.method != StreamedMethod::kMagnitude) {
      if (!tops_[0].NeedsPass()) return true;
      if (windows_[0].enabled()) {
        windows_[0].CountKeys(k, m);
      } else {
        tops_[0].CountKeys(k, m);
      }
      return true;
    }
    lo &= ~kSignBit;
    hi &= ~kSignBit;
    T lo_v, hi_v;
    std::memcpy(&lo_v, &lo, sizeof(lo));
    std::memcpy(&hi_v, &hi, sizeof(hi));
    ranges_[0].Add(lo_v);
    ranges_[0].Add(hi_v);
    windows_[0].CountKeys(k, m);
    return true;
  }

  // The output pass on the stored bits (bits_, no delta overflowed): the
  // selection on |D|'s keys, the merged delta (magnitude: D on the mask;
  // TIES: the trimmed D times lambda, kept where non-zero), FuseTensor and
  // the BF16 rounding in one loop: a kept entry is pre + delta rounded, the
  // others keep their stored bits (the rounding of an exact BF16 value is
  // itself). The selection's ties (keys in [tie_lo, threshold], the first
  // ones in index order) are all taken when the chunk holds no more of them
  // than are left; else (one chunk per tensor at most) the chunk is
  // decoded and selected as Output does. False when an input value is not
  // finite (it changed since pass 0).
  absl::StatusOr<bool> OutputBits(int64_t off, int64_t m) {
    StreamedTopK<T>& top = tops_[0];
    const Key a = top.threshold(), b = top.tie_lo(), width = a - b;
    const int64_t ties_left = top.ties_left();
    const uint32_t take_ties = ties_left > 0;
    uint32_t bad = 0;
    int64_t ties = 0, kept = 0;
    if constexpr (std::is_same_v<T, float>) {
      kept = Bf16OutputChunk(
          reader_.pre_bits(), reader_.ft_bits(), m, a, b, width, take_ties,
          o_.method == StreamedMethod::kMagnitude,
          static_cast<float>(o_.lambda),
          reinterpret_cast<uint16_t*>(out_.data()), &ties, &bad);
    }
    if (bad) return false;
    if (take_ties && ties > ties_left) {
      // The ties run out in this chunk: decoded and selected in order.
      TAILOR_ASSIGN_OR_RETURN(bool finite, reader_.Read(off, m));
      if (!finite) return false;
      Output(m);
      return true;
    }
    if (take_ties) top.TakeTies(ties);
    kept_ += kept;
    write_status_ = write_(absl::string_view(
        out_.data(), static_cast<size_t>(m) * t_.element_size));
    return true;
  }

  // keys_[0, m): the selection keys of task i's chunk (|D_i| for TIES and
  // for magnitude's output pass, after ToDeltaKeys; the min-max score for
  // magnitude's counting passes; all >= +0 or ranked by magnitude, so
  // MagnitudeKey is their KeyOf, but for a NaN score: ScoreKey).
  void Keys(size_t i, int64_t m, bool scores) {
    using Key = typename StreamedTopK<T>::Key;
    const T* d = reader_.delta(i);
    Key* k = keys_.data();
    if (!scores) {
      for (int64_t j = 0; j < m; ++j) {
        k[j] = StreamedTopK<T>::MagnitudeKey(d[j]);
      }
      return;
    }
    const MinMax<T>& r = ranges_[i];
    if (!r.positive) {
      std::fill(k, k + m, StreamedTopK<T>::MagnitudeKey(T(0)));
      return;
    }
    if (!std::isfinite(r.range)) {  // a delta overflowed: NaN scores
      for (int64_t j = 0; j < m; ++j) k[j] = ScoreKey(r, d[j]);
      return;
    }
    const T lo = r.lo, range = r.range;
    for (int64_t j = 0; j < m; ++j) {
      k[j] = StreamedTopK<T>::MagnitudeKey((std::fabs(d[j]) - lo) / range);
    }
  }

  // The selection key of d's min-max score: its MagnitudeKey, but a NaN
  // score (|d| = Inf over an infinite range, Inf / Inf: a delta of finite
  // inputs overflowed) as KeyOf's NaN, above every other key and equal to
  // every NaN (TopKMask's order).
  static inline Key ScoreKey(const MinMax<T>& r, T d) {
    const T s = r.Score(d);
    return std::isnan(s) ? ~Key{0} : StreamedTopK<T>::MagnitudeKey(s);
  }

  // Magnitude: moves task i's selection from the min-max scores' keys to
  // |D|'s, so that the output pass ranks |D| with no per-entry division.
  // The scores are a monotone image f of |D|'s keys (RankImage) over
  // [MagnitudeKey(lo), ~0] (every key of the tensor lies there), so the
  // keys whose f is above the score threshold t are those above A, the
  // largest key with f(A) <= t, and those whose f equals t form [B, A], B
  // the smallest key with f(B) >= t: the same entries, in the same index
  // order for the ties. Found by binary search. REQUIRES: the selection is
  // counted (!NeedsPass()), on score keys.
  void ToDeltaKeys(size_t i) {
    StreamedTopK<T>& top = tops_[i];
    const std::function<Key(Key)> f = RankImage(i);
    const Key t = top.threshold();
    const int64_t ties = top.ties_left();
    const Key first = StreamedTopK<T>::MagnitudeKey(ranges_[i].lo);
    const Key last = ~Key{0};
    if (f(first) > t) {  // every key is kept
      top.SetThresholdRange(0, 0, std::numeric_limits<int64_t>::max());
      return;
    }
    Key a = first, hi = last;  // the largest key with f <= t
    while (a < hi) {
      const Key mid = a + (hi - a) / 2 + (hi - a) % 2;
      if (f(mid) <= t) {
        a = mid;
      } else {
        hi = mid - 1;
      }
    }
    if (!(f(last) >= t)) {  // nothing ranks at t or above
      top.SetThresholdRange(a, a, 0);
      return;
    }
    Key lo = first, b = last;  // the smallest key with f >= t
    while (lo < b) {
      const Key mid = lo + (b - lo) / 2;
      if (f(mid) >= t) {
        b = mid;
      } else {
        lo = mid + 1;
      }
    }
    if (b <= a) {
      top.SetThresholdRange(b, a, ties);
    } else {
      top.SetThresholdRange(a, a, 0);  // no key's f equals t
    }
  }

  // The monotone image of task i's |D| keys its selection ranks: the
  // min-max score's key for magnitude (MinMax::Score, as Keys), the key
  // itself for TIES. REQUIRES: magnitude's ranges are finished.
  std::function<Key(Key)> RankImage(size_t i) const {
    if (o_.method != StreamedMethod::kMagnitude) {
      return [](Key key) { return key; };
    }
    const MinMax<T>* r = &ranges_[i];
    return [r](Key key) {
      key &= ~kSignBit;  // |D| >= +0
      T v;
      std::memcpy(&v, &key, sizeof(v));
      return ScoreKey(*r, v);
    };
  }

  // Reads TopKWindow::kSampleKeys elements (all of a smaller tensor) in
  // blocks spread evenly over the tensor and sets each unsettled task's
  // window from its |D| keys; FuseOne's error when a sampled input value
  // is not finite.
  absl::Status SampleWindows() {
    const int64_t n = t_.numel;
    windows_.clear();
    windows_.resize(tasks_);
    bool any = false;
    for (const auto& top : tops_) any = any || top.NeedsPass();
    if (!any) return absl::OkStatus();
    const auto blocks = TopKWindow<T>::SampleBlocks(n, t_.chunk);
    std::vector<std::vector<Key>> sample(tasks_);
    for (auto& v : sample) {
      v.reserve(static_cast<size_t>(std::min(n, TopKWindow<T>::kSampleKeys)));
    }
    for (const auto& [off, m] : blocks) {
      TAILOR_ASSIGN_OR_RETURN(bool finite, reader_.Read(off, m));
      if (!finite) return reader_.NonFiniteInputError();
      for (size_t i = 0; i < tasks_; ++i) {
        const T* d = reader_.delta(i);
        for (int64_t j = 0; j < m; ++j) {
          sample[i].push_back(StreamedTopK<T>::MagnitudeKey(d[j]));
        }
      }
    }
    const int64_t budget = TopKWindow<T>::Budget(n, t_.chunk);
    for (size_t i = 0; i < tasks_; ++i) {
      if (!tops_[i].NeedsPass()) continue;
      windows_[i] =
          TopKWindow<T>(std::move(sample[i]), n, tops_[i].k(), budget);
    }
    return absl::OkStatus();
  }

  // Pass 0 on a chunk: magnitude's min/max of |D| (on the keys:
  // non-negative floats order as integers; fabs(-0) = +0) and each
  // window's candidates; TIES without a window counts its first digit.
  void CountFirst(int64_t m) {
    const bool magnitude = o_.method == StreamedMethod::kMagnitude;
    for (size_t i = 0; i < tasks_; ++i) {
      if (!magnitude) {
        if (!tops_[i].NeedsPass()) continue;
        Keys(i, m, /*scores=*/false);
        if (windows_[i].enabled()) {
          windows_[i].CountKeys(keys_.data(), m);
        } else {
          tops_[i].CountKeys(keys_.data(), m);
        }
        continue;
      }
      const T* d = reader_.delta(i);
      Key* k = keys_.data();
      Key lo = ~Key{0}, hi = 0;
      for (int64_t j = 0; j < m; ++j) {
        const Key key = StreamedTopK<T>::MagnitudeKey(d[j]);
        k[j] = key;
        lo = key < lo ? key : lo;
        hi = key > hi ? key : hi;
      }
      lo &= ~kSignBit;
      hi &= ~kSignBit;
      T lo_v, hi_v;
      std::memcpy(&lo_v, &lo, sizeof(lo));
      std::memcpy(&hi_v, &hi, sizeof(hi));
      ranges_[i].Add(lo_v);
      ranges_[i].Add(hi_v);
      windows_[i].CountKeys(k, m);
    }
  }

  // A radix pass on a chunk, for the selections pass 0 did not settle.
  void Count(int64_t m) {
    for (size_t i = 0; i < tasks_; ++i) {
      if (!tops_[i].NeedsPass()) continue;
      Keys(i, m, /*scores=*/o_.method == StreamedMethod::kMagnitude);
      tops_[i].CountKeys(keys_.data(), m);
    }
  }

  void Output(int64_t m) {
    const T* p = reader_.pre();
    float* f = fused_.data();
    if (o_.method == StreamedMethod::kMagnitude) {
      OutputMagnitude(p, m, f);
    } else {
      OutputTies(p, m, f);
    }
    Encode(f, m, t_.stored, out_.data());
    write_status_ = write_(absl::string_view(
        out_.data(), static_cast<size_t>(m) * t_.element_size));
  }

  // TailorLayerPrepared without a Hessian: delta_i = D_i on the mask; one
  // task as is, several stitched (Stitch's operations and order).
  void OutputMagnitude(const T* p, int64_t m, float* f) {
    if (tasks_ == 1) {
      const T* d = reader_.delta(0);
      Keys(0, m, /*scores=*/false);  // |D|'s keys (ToDeltaKeys)
      bool* mask = mask_.get();
      kept_ += tops_[0].SelectKeys(keys_.data(), m, mask);
      // The mask's bytes (0 or 1) as integers: a bool load does not
      // vectorise.
      const auto* mk = reinterpret_cast<const uint8_t*>(mask);
      for (int64_t j = 0; j < m; ++j) f[j] = Fuse(mk[j] != 0, p[j], d[j]);
      if (reader_.delta_nonfinite(0) && !nonfinite_kept_[0]) {
        for (int64_t j = 0; j < m; ++j) {
          if (mk[j] != 0 && NonFinite(d[j])) nonfinite_kept_[0] = true;
        }
      }
      return;
    }
    const T tasks = static_cast<T>(tasks_);
    for (int64_t j = 0; j < m; ++j) {
      bool any = false;
      T sum = 0, selected = 0;
      for (size_t i = 0; i < tasks_; ++i) {
        const T d = reader_.delta(i)[j];
        const bool keep = tops_[i].KeepKey(StreamedTopK<T>::MagnitudeKey(d));
        if (keep && NonFinite(d)) nonfinite_kept_[i] = true;
        any = any || keep;
        const T masked = keep ? d : T(0);
        sum = i == 0 ? masked : sum + masked;
        selected = i == 0 ? T(keep) : selected + T(keep);
      }
      T delta = sum;
      switch (o_.aggregation) {
        case Aggregation::kMeanSelected:
          delta = selected > 0 ? sum / std::max(selected, T(1)) : T(0);
          break;
        case Aggregation::kMeanAll:
          delta = sum / tasks;
          break;
        case Aggregation::kSum:
          break;
      }
      kept_ += any;
      f[j] = Fuse(any, p[j], delta);
    }
  }

  // Ties()'s elementwise steps: trimmed t_i, total, elected sign, disjoint
  // mean over the agreeing tasks, times lambda; the mask is delta != 0.
  void OutputTies(const T* p, int64_t m, float* f) {
    const T lambda = static_cast<T>(o_.lambda);
    if (tasks_ == 1) {
      // One task: total = t, every non-zero t agrees with its own sign, and
      // the disjoint mean is (0 + t) / 1 = t exactly.
      const T* d = reader_.delta(0);
      Keys(0, m, /*scores=*/false);
      bool* mask = mask_.get();
      tops_[0].SelectKeys(keys_.data(), m, mask);
      // Branch-free, so that it vectorises (32-bit counts per block; the
      // mask's bytes as integers, as in OutputMagnitude).
      const auto* mk = reinterpret_cast<const uint8_t*>(mask);
      for (int64_t j0 = 0; j0 < m; j0 += kCountBlock) {
        const int64_t end = std::min(m, j0 + kCountBlock);
        uint32_t kept = 0;
        for (int64_t j = j0; j < end; ++j) {
          const T delta = KeepOrZero(mk[j] != 0, d[j]) * lambda;
          const bool keep = NonZero(delta);
          kept += keep;
          f[j] = Fuse(keep, p[j], delta);
        }
        kept_ += kept;
      }
      return;
    }
    trimmed_.resize(tasks_);
    T* t = trimmed_.data();
    for (int64_t j = 0; j < m; ++j) {
      T total = 0;
      for (size_t i = 0; i < tasks_; ++i) {
        const T d = reader_.delta(i)[j];
        t[i] = tops_[i].KeepKey(StreamedTopK<T>::MagnitudeKey(d)) ? d : T(0);
        total = i == 0 ? t[0] : total + t[i];
      }
      const T sign = Sign(total);
      T agree_sum = 0, agree_count = 0;
      for (size_t i = 0; i < tasks_; ++i) {
        const bool agrees = t[i] != 0 && sign != 0 && Sign(t[i]) == sign;
        agree_sum = agree_sum + (agrees ? t[i] : T(0));
        agree_count = agree_count + T(agrees);
      }
      const T mean =
          agree_count > 0 ? agree_sum / std::max(agree_count, T(1)) : T(0);
      const T delta = mean * lambda;
      const bool keep = delta != 0;
      kept_ += keep;
      f[j] = Fuse(keep, p[j], delta);
    }
  }

  const StreamedTensor& t_;
  const StreamedMergeOptions& o_;
  const std::function<absl::Status(absl::string_view)>& write_;
  const size_t tasks_;
  ChunkReader<T> reader_;
  std::vector<StreamedTopK<T>> tops_;
  std::vector<MinMax<T>> ranges_;
  std::vector<TopKWindow<T>> windows_;  // pass 0 only
  std::vector<T> trimmed_;
  std::vector<typename StreamedTopK<T>::Key> keys_;  // a chunk's keys
  std::unique_ptr<bool[]> mask_;                     // a chunk's mask
  std::vector<float> fused_;
  std::vector<char> out_;
  // BF16 inputs, float32 compute, one task: pass 0, TIES's radix passes
  // and the output pass run on the stored bits (ForEachBitsChunk).
  const bool bits_;
  int64_t kept_ = 0;
  // Magnitude, per task: whether a kept delta is not finite (overflowed).
  std::vector<bool> nonfinite_kept_;
  absl::Status write_status_;
};

}  // namespace

absl::StatusOr<StreamedMergeResult> StreamThresholdMerge(
    const StreamedTensor& tensor, const StreamedMergeOptions& options,
    const std::function<absl::Status(absl::string_view)>& write) {
  if (tensor.float64) {
    return Streamer<double>(tensor, options, write).Run();
  }
  return Streamer<float>(tensor, options, write).Run();
}

}  // namespace tailor
