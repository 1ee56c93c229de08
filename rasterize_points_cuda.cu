// PyTorch glue for the CUDA backend: allocation through the caching allocator, stage order, one
// host read per forward (the number of tile pairs), launch checks, and debug synchronization.
// Compiled by nvcc for GPUs and, under DGRD_EMULATE_CUDA, by the host compiler for the emulated
// backend (CPU tensors, the kernels run by cuda_emulation.h): the few device-specific lines are
// in DeviceContext, device_bytes_available, uninitialized, zero_async and copy_async.
#ifndef DGRD_EMULATE_CUDA
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#endif
#include <ATen/Context.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/searchsorted.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "cuda_rasterizer/cuda_backend.h"
#include "rasterize_points.h"

namespace dgrd {

namespace {

// Checks a launch; with `wait` (debug mode) also waits for it, so an error names the stage that
// failed.
void check_launch(const char* stage, bool wait = false) {
  const cudaError_t launch = cudaGetLastError();
  TORCH_CHECK(launch == cudaSuccess, "diff_gaussian_rasterization_depth: CUDA stage '", stage,
              "' failed to launch: ", cudaGetErrorString(launch));
  if (wait) {
    const cudaError_t run = cudaDeviceSynchronize();
    TORCH_CHECK(run == cudaSuccess, "diff_gaussian_rasterization_depth: CUDA stage '", stage,
                "' failed: ", cudaGetErrorString(run));
  }
}

void check_event(cudaError_t status) {
  TORCH_CHECK(status == cudaSuccess, "diff_gaussian_rasterization_depth: stage timing: ",
              cudaGetErrorString(status));
}

// Device time of each stage of the last forward and the last backward (benchmarks; off unless
// set_cuda_stage_timing switched it on): an event at the start of the call and one after each
// stage, on the call's stream; read() waits for the last and gives ("forward/<stage>", ms) and
// ("backward/<stage>", ms) in the order the stages ran (a stage met twice adds up).
class StageTimer {
 public:
  bool enabled = false;

  void start(const char* call, cudaStream_t stream) {
    if (!enabled) return;
    auto& events = calls_[call];
    release(events);
    current_ = &events;
    stream_ = stream;
    record("start");
  }
  void record(const char* stage) {
    if (!enabled || current_ == nullptr) return;
    cudaEvent_t event;
    check_event(cudaEventCreate(&event));
    check_event(cudaEventRecord(event, stream_));
    current_->emplace_back(stage, event);
  }
  std::vector<std::pair<std::string, double>> read() {
    std::vector<std::pair<std::string, double>> ms;
    std::map<std::string, size_t> index;
    for (const char* call : {"forward", "backward"}) {
      const auto found = calls_.find(call);
      if (found == calls_.end() || found->second.empty()) continue;
      const Events& events = found->second;
      check_event(cudaEventSynchronize(events.back().second));
      for (size_t k = 1; k < events.size(); ++k) {
        float elapsed = 0.f;
        check_event(cudaEventElapsedTime(&elapsed, events[k - 1].second, events[k].second));
        const std::string name = std::string(call) + "/" + events[k].first;
        if (index.emplace(name, ms.size()).second) ms.emplace_back(name, 0.0);
        ms[index[name]].second += elapsed;
      }
    }
    return ms;
  }
  void clear() {
    for (auto& [call, events] : calls_) release(events);
    current_ = nullptr;
  }

 private:
  using Events = std::vector<std::pair<std::string, cudaEvent_t>>;
  static void release(Events& events) {
    for (auto& e : events) check_event(cudaEventDestroy(e.second));
    events.clear();
  }
  std::map<std::string, Events> calls_;
  Events* current_ = nullptr;
  cudaStream_t stream_ = nullptr;
};

StageTimer& stage_timer() {
  static StageTimer timer;
  return timer;
}

void check_stage(const RasterConfig& c, const char* stage) {
  check_launch(stage, c.debug);
  stage_timer().record(stage);
}

// The device the stages run on: the tensors' GPU and its current stream.
struct DeviceContext {
#ifdef DGRD_EMULATE_CUDA
  explicit DeviceContext(const at::Tensor&) {}
  cudaStream_t stream = nullptr;
#else
  explicit DeviceContext(const at::Tensor& t)
      : guard(t.device()), stream(c10::cuda::getCurrentCUDAStream()) {}
  const c10::cuda::CUDAGuard guard;
  const cudaStream_t stream;
#endif
};

// The SMs of the current device. The emulation runs one block
// at a time and calls itself one SM, so that the tests' small scenes split their lists too.
int multiprocessors() {
#ifdef DGRD_EMULATE_CUDA
  return 1;
#else
  int count = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount,
                                        c10::cuda::current_device()));
  return count;
#endif
}

// A CUB call reports its own errors (sizing, scratch, launch) through its return value.
void check_cub(cudaError_t status, const char* stage) {
  TORCH_CHECK(status == cudaSuccess, "diff_gaussian_rasterization_depth: CUDA stage '", stage,
              "' (CUB) failed: ", cudaGetErrorString(status));
}

// The memory a forward's `bytes` are checked against: free device memory plus what PyTorch's
// caching allocator holds but does not use. Asked of the driver only for a request over an
// eighth of the device's memory: cudaMemGetInfo takes 5-10 us (milliseconds on some drivers), a
// cost on every call of a small render, and a request under that size cannot be absurd (one that
// still fails gets the caching allocator's own out-of-memory error). Below it: no limit.
int64_t device_bytes_available(int64_t bytes) {
#ifdef DGRD_EMULATE_CUDA
  (void)bytes;  // tests lower the host budget to reach the checks with any request
  return host_bytes_available();
#else
  constexpr int kDevices = 64;
  static std::atomic<int64_t> total_of[kDevices] = {};  // 0 until the device is first asked
  const int device = c10::cuda::current_device();
  const int64_t total = device < kDevices ? total_of[device].load() : 0;
  if (total > 0 && bytes <= total / 8) return std::numeric_limits<int64_t>::max();
  size_t free_bytes = 0, total_bytes = 0;
  C10_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  if (device < kDevices) total_of[device].store(int64_t(total_bytes));
  const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device);
  const size_t aggregate = 0;  // StatType::AGGREGATE, whose namespace varies across versions
  const int64_t cached = stats.reserved_bytes[aggregate].current -
                         stats.allocated_bytes[aggregate].current;
  return int64_t(free_bytes) + std::max<int64_t>(cached, 0);
#endif
}

// A buffer the kernels must write before reading. Under emulation it is poisoned, so that
// reading an unwritten element shows (NaN, or an index far out of range).
at::Tensor uninitialized(at::Tensor t) {
#ifdef DGRD_EMULATE_CUDA
  using emu::PoisonKind;
  const auto type = t.scalar_type();
  const PoisonKind kind = type == at::kInt    ? PoisonKind::Int32
                          : type == at::kLong ? PoisonKind::Int64
                                              : PoisonKind::Bytes;
  emu::poison(t.data_ptr(), t.nbytes(), kind);
#endif
  return t;
}

at::Tensor device_empty(c10::IntArrayRef sizes, const at::TensorOptions& opts) {
  return uninitialized(at::empty(sizes, opts));
}

// Zeroes t, or copies src's bytes into t, on the stream by the runtime's own memset and copy:
// ATen's fill_ and copy_ cost several times the host time (dispatch, a TensorIterator, a kernel
// launch for the fill), where the forward before the render is bound by the host.
void zero_async(const at::Tensor& t, cudaStream_t stream) {
#ifdef DGRD_EMULATE_CUDA
  (void)stream;
  std::memset(t.data_ptr(), 0, t.nbytes());
#else
  C10_CUDA_CHECK(cudaMemsetAsync(t.data_ptr(), 0, t.nbytes(), stream));
#endif
}
void copy_async(const at::Tensor& t, const at::Tensor& src, cudaStream_t stream) {
  TORCH_INTERNAL_ASSERT(t.nbytes() == src.nbytes() && t.is_contiguous() && src.is_contiguous());
#ifdef DGRD_EMULATE_CUDA
  (void)stream;
  std::memcpy(t.data_ptr(), src.data_ptr(), t.nbytes());
#else
  C10_CUDA_CHECK(cudaMemcpyAsync(t.data_ptr(), src.data_ptr(), t.nbytes(),
                                 cudaMemcpyDeviceToDevice, stream));
#endif
}

// At least one byte: an empty tensor's data pointer is null, and CUB takes a null scratch
// pointer as a request for its size, so a call given one would do nothing and report success.
at::Tensor scratch(size_t bytes, const at::Tensor& like) {
  return device_empty({int64_t(std::max<size_t>(bytes, 1))}, like.options().dtype(at::kByte));
}

// The tile splits saved in s: the buffers, and `length` where the caller knows it (the
// backward reads it on the device). No capacity: lists are not split.
TileSplits splits_of(const ForwardState& s, int length = 0) {
  if (s.split_state.numel() == 0) return {0, 0, nullptr, nullptr, nullptr, nullptr};
  int* header = s.tile_splits.data_ptr<int>();
  return {length, int(s.split_state.size(0)), header, header + 1, s.split_state.data_ptr<float>(),
          nullptr};
}

// The split forward's own splits (gpu::forward_split_length) and their buffers, for the
// forward alone: the backward's state lies at every state_every-th of them.
struct ForwardSplits {
  TileSplits splits{};  // none: the forward walks whole lists
  at::Tensor parts, composites;
};

// The forward's tile splits, planned from the tile ranges: parts of gpu::split_length for
// `pairs` pairs on this GPU, and a slot for every window of that length the pairs span, saved
// for the backward; with the split forward, `forward` gets its own (no length on the device,
// the backward's state) and the parts' composites.
TileSplits plan_splits(int64_t pairs, const RasterConfig& c, ForwardState& s,
                       ForwardSplits& forward, const at::TensorOptions& opts,
                       cudaStream_t stream) {
  const int length = gpu::split_length(pairs, multiprocessors());
  const int64_t capacity = length > 0 ? (pairs - 1) / length : 0;
  if (capacity == 0) return splits_of(s);
  s.tile_splits = device_empty({1 + 2 * capacity}, opts.dtype(at::kInt));
  s.split_state = device_empty({capacity, TileSplits::kSplitValues, kTilePixels}, opts);
  const TileSplits splits = splits_of(s, length);
  const int tiles = c.tiles_x() * c.tiles_y();
  gpu::plan_splits(splits, tiles, s.tile_ranges.data_ptr<int>(), stream);
  if (!gpu::split_forward(tiles, multiprocessors())) return splits;
  const int forward_length = gpu::forward_split_length(length);
  const int64_t forward_capacity = (pairs - 1) / forward_length;
  forward.splits = splits;  // the backward's own, where the length does not halve
  if (forward_length != length) {
    forward.parts = device_empty({2 * forward_capacity}, opts.dtype(at::kInt));
    forward.splits.length = forward_length;
    forward.splits.capacity = int(forward_capacity);
    forward.splits.header = nullptr;  // the backward reads its own length
    forward.splits.parts = forward.parts.data_ptr<int>();
    forward.splits.state_every = length / forward_length;
    gpu::plan_splits(forward.splits, tiles, s.tile_ranges.data_ptr<int>(), stream);
  }
  forward.composites =
      device_empty({forward_capacity, TileSplits::kCompositeValues, kTilePixels}, opts);
  forward.splits.composite = forward.composites.data_ptr<float>();
  return splits;
}

// The feature kernels walk split lists in parts too when their buffer (`rows` x `values` x a
// tile's pixels) stays under CudaTuning::feature_split_bytes, else whole lists: the forward's
// sums of each part that ends at a split (C values a pixel), the backward's sums of w (F . g)
// per part and chunk of channels.
at::Tensor feature_split_buffer(int64_t rows, int64_t values,
                                const at::TensorOptions& opts) {
  const int64_t bytes = rows * values * kTilePixels * int64_t(sizeof(float));
  if (rows == 0 || bytes > gpu::cuda_tuning().feature_split_bytes) return {};
  return device_empty({rows, values, kTilePixels}, opts);
}

void require_float32(const GaussianTensors& g) {
  TORCH_CHECK_TYPE(g.means3D.scalar_type() == at::kFloat,
                   "diff_gaussian_rasterization_depth: means3D: the CUDA backend takes float32, "
                   "got ", g.means3D.scalar_type());
}

// The tile lists: every (tile, Gaussian) pair, sorted by tile and then by depth (ties in index
// order), by one of two equivalent ways (gpu::CudaTuning::depth_first_sort): a sort of 64-bit
// (tile, depth) keys, or a sort by depth of the Gaussians and then a stable one of 32-bit tile
// keys. The binning owns what the preprocess writes for it (tiles touched, tile rectangles, the
// depth keys: binning_state() and depth_keys()); then count_pairs() makes the forward's one host
// read, compact() moves the state to the Gaussians with tiles, and sort() writes the lists.
// Each buffer is freed once its last reader is queued (the caching allocator reuses it in stream
// order), so that no stage holds the earlier stages' buffers: the pairs sort beside the
// Gaussians' state alone, and the render holds none of it.
class Binning {
 public:
  Binning(const RasterConfig& c, const at::Tensor& like, cudaStream_t stream)
      : c_(c), like_(like), stream_(stream), cam_(make_camera<float>(c)),
        count_(int(like.size(0))), depth_first_(gpu::cuda_tuning().depth_first_sort),
        compact_(depth_first_ && gpu::cuda_tuning().compact_state && count_ > 0) {
    const auto ints = like_.options().dtype(at::kInt);
    const auto longs = like_.options().dtype(at::kLong);
    // With the compact state, the preprocess counts the Gaussians with tiles past the end.
    tiles_touched_ = device_empty({count_ + (compact_ ? 1 : 0)}, longs);
    if (compact_) zero_async(tiles_touched_.narrow(0, count_, 1), stream_);
    static_assert(sizeof(TileRect) == 4 * sizeof(int), "TileRect must be 4 ints");
    rects_ = device_empty({count_, 4}, ints);
    if (depth_first_) {
      depth_keys_ = device_empty({count_}, ints);
      order_ = device_empty({count_}, ints);
    }
  }

  // With the compact state the preprocess stores no rows (compact() projects the Gaussians with
  // tiles again, into their rows by depth): only P-sized binning is held until the pairs.
  bool compact_state() const { return compact_; }

  // The Gaussians' state with the binning's fields, for the preprocess and sort(); without rows
  // (null) with the compact state, whose ForwardState has none yet.
  GaussianState<float> binning_state(const ForwardState& s, const at::Tensor& colors) {
    return make_state<float>(s, tiles_touched_.data_ptr<int64_t>(),
                             reinterpret_cast<TileRect*>(rects_.data_ptr<int>()), colors);
  }

  // Where the preprocess writes the Gaussians' depth keys (and counts those with tiles, for
  // compact()); none for the 64-bit sort.
  gpu::DepthKeys depth_keys() {
    if (!depth_first_) return {};
    return {as_u32(depth_keys_), order_.data_ptr<int>(),
            compact_ ? tiles_touched_.data_ptr<int64_t>() + count_ : nullptr};
  }

  // Pair-sized memory the sort needs: keys and ids twice (the sort moves them between two
  // buffers; its own scratch is a few digit counts).
  int64_t bytes_per_pair() const {
    return 2 * int64_t((depth_first_ ? sizeof(uint32_t) : sizeof(uint64_t)) + sizeof(int));
  }

  // The number of pairs, by a scan of the tiles touched (in depth order when depth-first, the
  // Gaussians sorted by depth first): the forward's one host read.
  int64_t count_pairs() {
    if (count_ == 0) return pairs_ = 0;
    const auto longs = like_.options().dtype(at::kLong);
    const int64_t* touched = tiles_touched_.data_ptr<int64_t>();
    if (depth_first_) {
      const auto ints = like_.options().dtype(at::kInt);
      {
        at::Tensor keys[2] = {depth_keys_, device_empty({count_}, ints)};
        at::Tensor order[2] = {order_, device_empty({count_}, ints)};
        gpu::SortBuffers<uint32_t> key_buffers = {{as_u32(keys[0]), as_u32(keys[1])}};
        gpu::SortBuffers<int> order_buffers = {
            {order[0].data_ptr<int>(), order[1].data_ptr<int>()}};
        run_cub("sort by depth", [&](void* temp, size_t& bytes) {
          return gpu::sort_depths(temp, bytes, key_buffers, order_buffers, count_, stream_);
        });
        order_ = order[order_buffers.current];
        depth_keys_.reset();  // the keys, and the order's other buffer, go at the scope's end
      }
      offsets_ = device_empty({count_ + (compact_ ? 1 : 0)}, longs);
      run_cub("scan", [&](void* temp, size_t& bytes) {
        return gpu::inclusive_scan_by_depth(temp, bytes, touched, order_.data_ptr<int>(),
                                            offsets_.data_ptr<int64_t>(), count_, stream_);
      });
      // The count of Gaussians with tiles beside the pair count, so that one read takes both.
      if (compact_)
        copy_async(offsets_.narrow(0, count_, 1), tiles_touched_.narrow(0, count_, 1), stream_);
    } else {
      offsets_ = device_empty({count_}, longs);
      run_cub("scan", [&](void* temp, size_t& bytes) {
        return gpu::inclusive_scan(temp, bytes, touched, offsets_.data_ptr<int64_t>(), count_,
                                   stream_);
      });
    }
    tiles_touched_.reset();  // read by the scan alone
    if (!compact_) return pairs_ = offsets_[count_ - 1].item<int64_t>();  // the one host read
    const at::Tensor read = offsets_.narrow(0, count_ - 1, 2).cpu();  // the same, and the count
    binned_ = read.data_ptr<int64_t>()[1];
    return pairs_ = read.data_ptr<int64_t>()[0];
  }

  // With the compact state (gpu::CudaTuning::compact_state): s's means2d, conic_opacity and
  // features (colour and depth) for the Gaussians with tiles alone, in depth order, projected
  // again from the inputs, and their ids (s.gaussian_ids). The pairs then name these rows
  // (sort()). The forward never holds a row for a Gaussian without tiles (most of a large
  // scene's in one view: 71% of garden 1.0M's in its first camera), the render and the backward
  // hold 4 bytes a Gaussian with tiles more (its id).
  void compact(ForwardState& s, const Camera<float>& cam, const GaussianInputs<float>& in) {
    if (!compact_) return;
    const auto opts = like_.options();
    const int64_t rows = binned_;
    s.means2d = device_empty({rows, 2}, opts);
    s.conic_opacity = device_empty({rows, 4}, opts);
    s.features = device_empty({rows, 4}, opts);
    s.gaussian_ids = device_empty({rows}, opts.dtype(at::kInt));
    gpu::compact_state(cam, in, order_.data_ptr<int>(), int(rows),
                       make_state<float>(s, nullptr, nullptr), s.gaussian_ids.data_ptr<int>(),
                       stream_);
    check_stage(c_, "compact_state");
  }

  // The point list (Gaussian ids, or compact rows, by tile, then depth), and the tile ranges
  // written. The pairs are written into one buffer of keys and one of ids; the order, offsets
  // and rectangles go before the second buffers are taken for the sort.
  at::Tensor sort(const GaussianState<float>& state, int* tile_ranges) {
    const auto opts = like_.options();
    if (pairs_ == 0) {
      release();
      return device_empty({0}, opts.dtype(at::kInt));
    }
    const int tiles = c_.tiles_x() * c_.tiles_y();
    const int n = int(pairs_);
    const auto key_type = depth_first_ ? at::kInt : at::kLong;
    at::Tensor ids[2] = {device_empty({pairs_}, opts.dtype(at::kInt)), {}};
    at::Tensor keys[2] = {device_empty({pairs_}, opts.dtype(key_type)), {}};
    const int64_t* offsets = offsets_.data_ptr<int64_t>();
    if (depth_first_)  // with the compact state, the pairs name rows: ranks by depth
      gpu::duplicate_tile_keys(cam_, compact_ ? int(binned_) : count_, state,
                               order_.data_ptr<int>(), offsets, as_u32(keys[0]),
                               ids[0].data_ptr<int>(), compact_, stream_);
    else
      gpu::duplicate_keys(cam_, count_, state, offsets, as_u64(keys[0]), ids[0].data_ptr<int>(),
                          stream_);
    check_stage(c_, "duplicate_keys");
    release();
    ids[1] = device_empty({pairs_}, opts.dtype(at::kInt));
    keys[1] = device_empty({pairs_}, opts.dtype(key_type));
    gpu::SortBuffers<int> id_buffers = {{ids[0].data_ptr<int>(), ids[1].data_ptr<int>()}};
    if (depth_first_) {
      gpu::SortBuffers<uint32_t> key_buffers = {{as_u32(keys[0]), as_u32(keys[1])}};
      run_cub("sort", [&](void* temp, size_t& bytes) {
        return gpu::sort_tile_keys(temp, bytes, key_buffers, id_buffers, n, tiles, stream_);
      });
      gpu::identify_tile_ranges(key_buffers.sorted(), n, tile_ranges, stream_);
    } else {
      gpu::SortBuffers<uint64_t> key_buffers = {{as_u64(keys[0]), as_u64(keys[1])}};
      const int end_bit = gpu::sort_end_bit(tiles);
      run_cub("sort", [&](void* temp, size_t& bytes) {
        return gpu::sort_pairs(temp, bytes, key_buffers, id_buffers, n, end_bit, stream_);
      });
      gpu::identify_tile_ranges(key_buffers.sorted(), n, tile_ranges, stream_);
    }
    check_stage(c_, "tile_ranges");
    return ids[id_buffers.current];
  }

 private:
  // A CUB call made twice, as CUB asks: with no scratch, to size it, then with it.
  template <typename Call>
  void run_cub(const char* stage, Call call) {
    size_t bytes = 0;
    check_cub(call(nullptr, bytes), stage);
    at::Tensor temp = scratch(bytes, like_);
    check_cub(call(temp.data_ptr(), bytes), stage);
    check_stage(c_, stage);
  }

  // Every per-Gaussian buffer of the binning, once the pairs are written.
  void release() {
    for (at::Tensor* t : {&tiles_touched_, &rects_, &depth_keys_, &order_, &offsets_}) t->reset();
  }

  static uint32_t* as_u32(at::Tensor& t) {
    return reinterpret_cast<uint32_t*>(t.data_ptr<int>());
  }
  static uint64_t* as_u64(at::Tensor& t) {
    return reinterpret_cast<uint64_t*>(t.data_ptr<int64_t>());
  }

  const RasterConfig& c_;
  const at::Tensor& like_;
  const cudaStream_t stream_;
  const Camera<float> cam_;
  const int count_;
  const bool depth_first_;
  const bool compact_;        // depth-first, with gpu::CudaTuning::compact_state
  at::Tensor rects_;          // written by the preprocess, read when the pairs are written
  at::Tensor depth_keys_;     // depth-first: written by the preprocess, sorted with order_
  at::Tensor order_;          // depth-first: the Gaussians' ids, then by depth
  at::Tensor tiles_touched_;  // written by the preprocess, read by the scan; compact: then the
                              // number of Gaussians with tiles
  at::Tensor offsets_;        // inclusive scan of tiles touched (by depth when depth-first);
                              // compact: then the number of Gaussians with tiles
  int64_t pairs_ = 0;
  int64_t binned_ = 0;        // compact: the Gaussians with tiles
};

// The render backward's sums (gpu::SplatSums) laid over rows of input gradients, which this
// allocates: means3D, scales and rotations (3 + 3 + 4 values: the usual call), or means3D,
// cov3D_precomp and opacities (3 + 6 + 1) where the covariance is given. The preprocess backward
// reads each Gaussian's ten before it writes the rows.
gpu::SplatSums lay_splat_sums(const GaussianTensors& g, GradientTensors& d) {
  if (g.count() == 0) return {};  // nothing to sum; allocate_missing takes every gradient
  using G = GradientTensors;
  std::vector<G::Field> rows = {&G::means3D, &G::scales, &G::rotations};
  if (g.cov3D_precomp.numel() > 0)  // absent inputs are empty tensors
    rows = {&G::means3D, &G::cov3D_precomp, &G::opacities};
  else
    TORCH_CHECK(g.scales.numel() > 0 && g.rotations.numel() > 0,
                "diff_gaussian_rasterization_depth: scales and rotations, or cov3D_precomp");
  d.allocate_missing(g, device_empty, rows);
  gpu::SplatSums sums{};
  int k = 0;
  for (G::Field field : rows) {
    at::Tensor& row = d.*field;
    const int columns = int(row.size(1));
    for (int column = 0; column < columns && k < kSplatGradValues; ++column, ++k) {
      sums.value[k] = row.data_ptr<float>() + column;
      sums.row_bytes[k] = uint32_t(columns * sizeof(float));
    }
  }
  TORCH_INTERNAL_ASSERT(k == kSplatGradValues, "the sums need ", kSplatGradValues,
                        " values a Gaussian, the rows hold ", k);
  return sums;
}

// The ordered sums (gpu::PairSums) where torch.use_deterministic_algorithms(True) is set: the
// pairs grouped by Gaussian, and zeroed rows for the kernels' pair sums.
struct OrderedPairs {
  at::Tensor rows, order, starts, feature_rows, absolute_rows;
  int feature_chunk = 0, feature_chunks = 0;

  static bool wanted() { return at::globalContext().deterministicAlgorithms(); }

  // Rows of `values` a pair (zeros: the pairs behind every pixel's last splat are not walked).
  OrderedPairs(const ForwardState& s, int64_t gaussians, int values, cudaStream_t stream) {
    const int64_t pairs = s.point_list.size(0);
    rows = zeroed({pairs, values}, s, stream);
    at::Tensor ids = device_empty({pairs}, s.means2d.options().dtype(at::kInt));
    gpu::pair_gaussians(s.lists(), pairs, ids.data_ptr<int>(), stream);
    // A stable sort keeps each Gaussian's pairs in list order (the order of their sum).
    auto [sorted, positions] = at::sort(ids, /*stable=*/true, /*dim=*/0, /*descending=*/false);
    order = positions;
    starts = at::searchsorted(sorted, at::arange(gaussians + 1, ids.options()));
  }

  // The backward's rows of feature channels, a row per chunk, and of AbsGS's statistic with
  // them (the absolute kernel's).
  void add_feature_rows(const ForwardState& s, const OptionalGrads<float>& extra,
                        cudaStream_t stream) {
    if (!extra.has_features()) return;
    const int64_t pairs = s.point_list.size(0);
    feature_chunk = gpu::feature_chunk(extra.channels);
    feature_chunks = (extra.channels + feature_chunk - 1) / feature_chunk;
    feature_rows = zeroed({pairs, feature_chunks, 6 + feature_chunk}, s, stream);
    if (extra.mean2d_abs) absolute_rows = zeroed({pairs, 2}, s, stream);
  }

  gpu::PairSums view() const {
    gpu::PairSums p;
    p.rows = rows.data_ptr<float>();
    p.order = order.data_ptr<int64_t>();
    p.starts = starts.data_ptr<int64_t>();
    p.feature_rows = output_or_null<float>(feature_rows);
    p.feature_chunk = feature_chunk;
    p.feature_chunks = feature_chunks;
    p.absolute_rows = output_or_null<float>(absolute_rows);
    return p;
  }

 private:
  static at::Tensor zeroed(c10::IntArrayRef sizes, const ForwardState& s, cudaStream_t stream) {
    at::Tensor t = device_empty(sizes, s.means2d.options());
    zero_async(t, stream);
    return t;
  }
};

// The buffers only the render backward reads, freed once it is queued (the caching allocator
// hands them on in stream order): all of the state but the radii.
void release_render_state(ForwardState& s) {
  const at::Tensor radii = s.radii;
  s = ForwardState{};
  s.radii = radii;
}

}  // namespace

ForwardResult forward_cuda(const RasterConfig& c, const GaussianTensors& g) {
  require_float32(g);
  const DeviceContext device(g.means3D);
  const cudaStream_t stream = device.stream;
  const int64_t P = g.count(), H = c.image_height, W = c.image_width;
  const auto opts = g.means3D.options();

  // Only P-sized memory until the pair count and the image are known to fit: with the compact
  // state (the default), the radii and the binning alone; else also the rows the render reads,
  // where the caller gives the colours the depth alone (the kernels read the colours where
  // they lie, GaussianState::colors: 12 bytes a Gaussian less, held to the backward;
  // doc/performance.md, "Peak memory").
  const at::Tensor& colors = g.colors_precomp;
  stage_timer().start("forward", stream);
  Binning bins(c, g.means3D, stream);
  ForwardState s = allocate_gaussian_state(P, opts, /*depth_only=*/colors.numel() > 0,
                                           /*rows=*/!bins.compact_state());
  for (at::Tensor* t : {&s.radii, &s.means2d, &s.conic_opacity, &s.features}) uninitialized(*t);
  const Camera<float> cam = make_camera<float>(c);
  const GaussianInputs<float> in = make_inputs<float>(g);
  const GaussianState<float> binning_state = bins.binning_state(s, colors);
  at::Tensor radii = device_empty({P}, opts.dtype(at::kInt));  // the caller's copy
  gpu::preprocess(cam, in, binning_state, bins.depth_keys(), radii.data_ptr<int>(), stream);
  check_stage(c, "preprocess");
  const int64_t pairs = bins.count_pairs();
  // colour (3), depth, weight, the saved pixel state (3) and n_contrib, and the optional maps
  const int64_t pixel_bytes =
      9 * int64_t(sizeof(float)) + optional_pixel_bytes(c, g, sizeof(float));
  const int64_t pair_bytes = pairs * bins.bytes_per_pair();
  const int64_t available = device_bytes_available(pair_bytes + int64_t(H) * W * pixel_bytes);
  check_tile_pairs(pairs, bins.bytes_per_pair(), available);
  check_image_buffers(H, W, pixel_bytes, available - pair_bytes);

  // Before the pairs take their memory: the state of the Gaussians with tiles alone (the pairs
  // written next read the binning's own fields only).
  bins.compact(s, cam, in);
  allocate_tile_ranges(c, s, opts);
  zero_async(s.tile_ranges, stream);
  s.point_list = bins.sort(binning_state, s.tile_ranges.data_ptr<int>());
  // The pixels' state after the sort, so that the sort does not hold it.
  allocate_pixel_state(c, s, opts);
  for (at::Tensor* t : {&s.pixel_state, &s.n_contrib, &s.median_contrib}) uninitialized(*t);
  // The binning's fields freed:
  const GaussianState<float> st = make_state<float>(s, nullptr, nullptr, colors);

  at::Tensor color = device_empty({3, H, W}, opts);
  at::Tensor depth = device_empty({H, W}, opts);
  at::Tensor weight = device_empty({H, W}, opts);
  at::Tensor feature_map = device_empty({g.channels(), H, W}, opts);
  at::Tensor median = device_empty({c.median_depth ? H : 0, W}, opts);
  const TileLists lists = s.lists();
  ForwardSplits forward;
  const TileSplits splits = plan_splits(pairs, c, s, forward, opts, stream);
  check_stage(c, "plan_splits");
  OptionalOutputs<float> extra = make_optional_outputs<float>(g, s, feature_map, median);
  at::Tensor feature_parts;  // with the split forward
  if (extra.has_features() && forward.splits.composite)
    feature_parts = feature_split_buffer(splits.capacity, g.channels(), opts);
  extra.feature_parts = output_or_null<float>(feature_parts);
  gpu::render(cam, st, lists, make_pixel_buffers<float>(s, color, depth, weight), extra, splits,
              forward.splits, stream);
  check_stage(c, "render");
  return {color, depth, weight, radii, feature_map, median, s.to_list()};
}

at::Tensor count_touches_cuda(const RasterConfig& c, const ForwardState& s) {
  const DeviceContext device(s.radii);
  at::Tensor touch_count = device_empty({s.radii.size(0)}, s.radii.options());
  zero_async(touch_count, device.stream);
  gpu::count_touches(make_camera<float>(c), make_state<float>(s, nullptr, nullptr), s.lists(),
                     touch_count.data_ptr<int>(), device.stream);
  return touch_count;
}

at::Tensor point_opacity_cuda(const RasterConfig& c, const GaussianTensors& g,
                              const ForwardState& s, const at::Tensor& given) {
  require_float32(g);
  const at::Tensor points = checked_points(g, given);
  const DeviceContext device(points);
  const int64_t n = points.size(0);
  const Camera<float> cam = make_camera<float>(c);
  at::Tensor opacity = device_empty({n}, points.options());
  at::Tensor keys = device_empty({n}, points.options().dtype(at::kInt));
  at::Tensor rows = uninitialized(struct_buffer<PointOnScreen<float>>(n, points.options()));
  at::Tensor quadrics =
      uninitialized(struct_buffer<RayQuadric<float>>(g.count(), points.options()));
  gpu::project_points(cam, points.data_ptr<float>(), int(n),
                      struct_pointer<PointOnScreen<float>>(rows), keys.data_ptr<int>(),
                      opacity.data_ptr<float>(), device.stream);
  gpu::ray_quadrics(cam, make_inputs<float>(g), struct_pointer<RayQuadric<float>>(quadrics),
                    device.stream);
  const PointBins bins = bin_points(keys, c.tiles_x() * c.tiles_y());
  gpu::point_opacity(cam, make_state<float>(s, nullptr, nullptr), s.lists(),
                     struct_pointer<RayQuadric<float>>(quadrics),
                     struct_pointer<PointOnScreen<float>>(rows), bins.order.data_ptr<int>(),
                     bins.ranges.data_ptr<int>(), opacity.data_ptr<float>(), device.stream);
  return opacity;
}

std::tuple<at::Tensor, at::Tensor> gaussian_contributions_cuda(const RasterConfig& c,
                                                               const ForwardState& s,
                                                               bool statistics) {
  const DeviceContext device(s.radii);
  // The weight sums, which float atomics would add in any order, summed per pair and gathered
  // (the counts, maxima and dominant map are exact in any order): where the caller reads them.
  std::optional<OrderedPairs> ordered;
  if (statistics && OrderedPairs::wanted())
    ordered.emplace(s, s.radii.size(0), /*values=*/2, device.stream);
  at::Tensor contribution =
      device_empty({s.radii.size(0), kContributionValues}, s.means2d.options());
  zero_async(contribution, device.stream);
  // Every pixel written by the kernel (a block a tile).
  at::Tensor dominant =
      device_empty({c.image_height, c.image_width}, s.radii.options().dtype(at::kInt));
  gpu::gaussian_contributions(make_camera<float>(c), make_state<float>(s, nullptr, nullptr),
                              s.lists(), contribution.data_ptr<float>(),
                              dominant.data_ptr<int>(),
                              ordered ? ordered->view() : gpu::PairSums{}, int(s.radii.size(0)),
                              device.stream);
  return {contribution, dominant};
}

BackwardResult backward_cuda(const RasterConfig& c, const GaussianTensors& g, ForwardState s,
                             const MapGrads& up, bool release_state) {
  require_float32(g);
  const DeviceContext device(g.means3D);
  const cudaStream_t stream = device.stream;
  const int64_t P = g.count();
  stage_timer().start("backward", stream);
  // The gradients that hold the render backward's sums first; the rest after it, so that with
  // release_state they take the memory of the state it read. The preprocess backward writes
  // every value of them: no zero fill but the sums'.
  GradientTensors grads = GradientTensors::sums_only(g, c.camera_grad);
  const gpu::SplatSums sums = lay_splat_sums(g, grads);
  gpu::clear_splat_sums(sums, int(P), stream);
  check_stage(c, "zero gradients");
  const Camera<float> cam = make_camera<float>(c);
  const int* radii = s.radii.data_ptr<int>();  // kept by release_render_state
  const GaussianState<float> st = make_state<float>(s, nullptr, nullptr, g.colors_precomp);
  const TileLists lists = s.lists();
  const PixelGrads<float> pg = {data_or_null<float>(up.color), data_or_null<float>(up.depth),
                                data_or_null<float>(up.weight)};
  const TileSplits splits = splits_of(s);
  OptionalGrads<float> extra = make_optional_grads<float>(g, s, up, grads);
  at::Tensor feature_dots;
  if (extra.has_features() && splits.capacity > 0) {
    const int chunk = gpu::feature_chunk(extra.channels);
    feature_dots =
        feature_split_buffer(c.tiles_x() * c.tiles_y() + splits.capacity,
                             (extra.channels + chunk - 1) / chunk, g.means3D.options());
  }
  extra.feature_dots = output_or_null<float>(feature_dots);
  const at::Tensor abs_sums = absolute_grad_sums(c, g);
  extra.mean2d_abs = reinterpret_cast<Vec2<float>*>(output_or_null<float>(abs_sums));
  std::optional<OrderedPairs> ordered;
  if (OrderedPairs::wanted()) {
    ordered.emplace(s, P, gpu::kPairValues, stream);
    ordered->add_feature_rows(s, extra, stream);
  }
  const gpu::PairSums pairs = ordered ? ordered->view() : gpu::PairSums{};
  gpu::render_backward(cam, st, lists, make_pixel_buffers<float>(s, {}, {}, {}), pg, extra,
                       sums, splits, pairs, stream);
  check_stage(c, "render_backward");
  if (ordered) {
    gpu::gather_pair_sums(int(P), pairs, sums, extra, stream);
    check_stage(c, "gather_pair_sums");
    ordered.reset();
  }
  feature_dots.reset();
  if (release_state) release_render_state(s);
  grads.allocate_missing(g, device_empty);
  CameraGrad<float>* camera = grads.camera_pointer<float>();
  at::Tensor partials;  // the camera gradient's per-block sums
  if (camera)
    partials = device_empty({int64_t(gpu::camera_grad_partials(int(P))), kCameraGradValues},
                            g.means3D.options());
  gpu::preprocess_backward(
      cam, make_inputs<float>(g), radii, sums, grads.pointers<float>(), camera,
      camera ? reinterpret_cast<CameraGrad<float>*>(partials.data_ptr<float>()) : nullptr,
      stream);
  check_stage(c, "preprocess_backward");
  append_absolute_grad(c, abs_sums, grads);
  return grads.to_list();
}

at::Tensor mark_visible_cuda(const at::Tensor& positions, const at::Tensor& viewmatrix) {
  TORCH_CHECK_TYPE(positions.scalar_type() == at::kFloat,
                   "positions: the CUDA backend takes float32, got ", positions.scalar_type());
  const DeviceContext device(positions);
  const int64_t P = positions.size(0);
  at::Tensor visible = device_empty({P}, positions.options().dtype(at::kBool));
  gpu::mark_visible(viewmatrix.data_ptr<float>(), positions.data_ptr<float>(), int(P),
                     visible.data_ptr<bool>(), device.stream);
  check_launch("mark_visible");
  return visible;
}

// The split_length switch checked: whole batches, and no longer than kMaxSplitLength, which the
// pair limit (kMaxTilePairs) leaves room for past a list's end.
static int split_length_of(int64_t value) {
  TORCH_CHECK_VALUE(value >= 0 && value % kTilePixels == 0 && value <= kMaxSplitLength,
                    "split_length: a multiple of ", kTilePixels, " up to ", kMaxSplitLength,
                    " (0: chosen), got ", value);
  return int(value);
}

// The split_forward switch checked: 1 always, 0 never, -1 by the image (gpu::split_forward).
static int split_forward_of(int64_t value) {
  TORCH_CHECK_VALUE(value >= -1 && value <= 1,
                    "split_forward: 1 (always), 0 (never) or -1 (by the image), got ", value);
  return int(value);
}

void set_cuda_tuning_cuda(const std::map<std::string, int64_t>& switches) {
  gpu::CudaTuning t;  // the defaults, for every switch not named
  for (const auto& [name, value] : switches) {
    if (name == "warp_skip") t.warp_skip = value != 0;
    else if (name == "scatter_reduce") t.scatter_reduce = value != 0;
    else if (name == "depth_first_sort") t.depth_first_sort = value != 0;
    else if (name == "compact_state") t.compact_state = value != 0;
    else if (name == "split_tiles") t.split_tiles = value != 0;
    else if (name == "split_forward") t.split_forward = split_forward_of(value);
    else if (name == "short_forward_parts") t.short_forward_parts = value != 0;
    else if (name == "parts_first") t.parts_first = value != 0;
    else if (name == "split_length") t.split_length = split_length_of(value);
    else if (name == "feature_split_bytes") t.feature_split_bytes = value;
    else TORCH_CHECK_VALUE(false, "set_cuda_tuning: no switch named ", name);
  }
  TORCH_CHECK_VALUE(t.feature_split_bytes >= 0, "feature_split_bytes: at least 0, got ",
                    t.feature_split_bytes);
  gpu::cuda_tuning() = t;
}

void set_cuda_stage_timing_cuda(bool on) {
  stage_timer().clear();
  stage_timer().enabled = on;
}

std::vector<std::pair<std::string, double>> cuda_stage_ms_cuda() { return stage_timer().read(); }

}  // namespace dgrd
