// train.cu: the training kernels that are not convolutions: softmax_xent, dropout, adam_step, the
// evaluation's count_correct, and the schedule around a step: batch_gather and step_end.
//
// Provides: softmax_xent (one block: per-row loss and dlogits, then the mean loss summed in row order by
//           thread 0), count_correct (one block: the rows whose first largest logit is their label, counted
//           into a device scalar, so an evaluation reads one number, not every batch's logits), dropout_fwd /
//           dropout_bwd (the hash mask of (seed, step, index), identical to the CPU twin's integer function),
//           adam_step (PyTorch's update over flat buffers), batch_gather (a batch copied out of a data set
//           resident in device memory, at the write-up's offset of the device step counter) and step_end (the
//           step's loss into the loss ring, then the device step counter advanced).
// The device step counter: one `unsigned int` in device memory holding the training steps taken (Params'
//           step count, 32 bits: the host refuses a step past 2^32 - 1). A step's launches that depend on
//           the step read it instead of taking the step as a value, so a step captured into a CUDA graph
//           replays correctly: batch_gather (the batch offset), dropout (step = *device_step + 1), the Adam
//           kernels (row *device_step of the Adam table, see adam.cuh); step_end, the step's last launch,
//           advances it. A null device_step means "use the value arguments" (a direct launch).
// Backward needs saved: dropout recomputes its mask from (seed, step); softmax_xent's dlogits is its own
//           backward; adam_step has none.
// Write rules: every output element is written once; adam_step updates p, m, v in place. A label outside
//              [0, classes) makes its row's loss and gradient NaN (the host checks the loss; the CPU twin
//              returns an error instead). Elementwise updates use explicit _rn intrinsics so no FMA is
//              contracted: dropout and adam match their twins bit for bit. batch_gather copies (the data set is
//              resident as the host's normalised f32 values), so its batch equals the host's bit for bit.
// CPU twins: src/cpu/loss.rs, src/cpu/dropout.rs, src/cpu/adam.rs, src/cpu/schedule.rs.

#include "adam.cuh"

extern "C" __global__ void softmax_xent(float* __restrict__ loss,          // [1]
                                        float* __restrict__ dlogits,       // [m, classes]
                                        const float* __restrict__ logits,  // [m, classes]
                                        const unsigned int* __restrict__ labels,  // [m]
                                        unsigned int m, unsigned int classes) {
  extern __shared__ float row_loss[];  // [m]
  const float inv_m = 1.0f / (float)m;
  for (unsigned int r = threadIdx.x; r < m; r += blockDim.x) {
    const float* l = logits + (unsigned long long)r * classes;
    float* d = dlogits + (unsigned long long)r * classes;
    float max = -INFINITY;
    bool nan = false;
    for (unsigned int c = 0; c < classes; ++c) {
      max = fmaxf(max, l[c]);
      nan |= l[c] != l[c];
    }
    if (nan) max = NAN;
    float sum = 0.0f;
    for (unsigned int c = 0; c < classes; ++c) {
      d[c] = expf(__fsub_rn(l[c], max));
      sum = __fadd_rn(sum, d[c]);
    }
    const unsigned int label = labels[r];
    const float picked = label < classes ? l[label] : NAN;
    row_loss[r] = __fsub_rn(logf(sum), __fsub_rn(picked, max));
    for (unsigned int c = 0; c < classes; ++c) {
      const float onehot = c == label ? 1.0f : 0.0f;
      d[c] = label < classes ? __fmul_rn(__fsub_rn(__fdiv_rn(d[c], sum), onehot), inv_m) : NAN;
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0.0f;
    for (unsigned int r = 0; r < m; ++r) total = __fadd_rn(total, row_loss[r]);
    loss[0] = __fmul_rn(total, inv_m);
  }
}

// count[0] (+)= the rows whose first largest logit is at their label, count[1] (+)= the rows holding a NaN
// (they never count as correct; the host reports them), adding to the counts when `accumulate`. Per-thread
// counts summed in thread order by thread 0: counts below 2^24 are exact in f32, whatever the order.
extern "C" __global__ void count_correct(float* __restrict__ count,                 // [2]
                                         const float* __restrict__ logits,          // [m, classes]
                                         const unsigned int* __restrict__ labels,   // [m]
                                         unsigned int m, unsigned int classes, int accumulate) {
  __shared__ float hits[256][2];
  float mine = 0.0f, nans = 0.0f;
  for (unsigned int r = threadIdx.x; r < m; r += blockDim.x) {
    const float* l = logits + (unsigned long long)r * classes;
    unsigned int best = 0;
    bool nan = false;
    for (unsigned int c = 0; c < classes; ++c) {
      nan |= l[c] != l[c];
      if (l[c] > l[best]) best = c;
    }
    if (nan) nans += 1.0f;
    else if (best == labels[r]) mine += 1.0f;
  }
  hits[threadIdx.x][0] = mine;
  hits[threadIdx.x][1] = nans;
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = accumulate ? count[0] : 0.0f, total_nan = accumulate ? count[1] : 0.0f;
    for (unsigned int t = 0; t < blockDim.x; ++t) {
      total += hits[t][0];
      total_nan += hits[t][1];
    }
    count[0] = total;
    count[1] = total_nan;
  }
}

// Chris Wellons' lowbias32 finaliser and the dropout hash (src/cpu/dropout.rs has the same).
__device__ __forceinline__ unsigned int mix32(unsigned int x) {
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  return x;
}

__device__ __forceinline__ unsigned int dropout_hash(unsigned long long seed, unsigned long long step,
                                                     unsigned long long index) {
  unsigned int h = mix32((unsigned int)seed ^ 0x9e3779b9u);
  h = mix32(h ^ (unsigned int)(seed >> 32));
  h = mix32(h ^ (unsigned int)step);
  h = mix32(h ^ (unsigned int)(step >> 32));
  h = mix32(h ^ (unsigned int)index);
  return mix32(h ^ (unsigned int)(index >> 32));
}

// The training step of a launch: `step` itself in a direct launch (device_step null), else the device
// counter's steps taken + 1 (the step being run).
__device__ __forceinline__ unsigned long long step_of(unsigned long long step, const unsigned int* device_step) {
  return device_step == nullptr ? step : (unsigned long long)*device_step + 1ull;
}

// out[i] = in[i] * scale where (hash >> 8) >= threshold, else 0: dropout's forward and backward alike.
__device__ __forceinline__ void dropout_apply(float* __restrict__ out, const float* __restrict__ in,
                                              unsigned long long n, unsigned long long seed,
                                              unsigned long long step, unsigned int threshold, float scale) {
  const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
  for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    out[i] = (dropout_hash(seed, step, i) >> 8) >= threshold ? __fmul_rn(in[i], scale) : 0.0f;
  }
}

extern "C" __global__ void dropout_fwd(float* __restrict__ y,        // [n]
                                       const float* __restrict__ x,  // [n]
                                       unsigned long long n, unsigned long long seed, unsigned long long step,
                                       const unsigned int* __restrict__ device_step,  // [1] or null: step_of
                                       unsigned int threshold, float scale) {
  dropout_apply(y, x, n, seed, step_of(step, device_step), threshold, scale);
}

extern "C" __global__ void dropout_bwd(float* __restrict__ dx,        // [n]
                                       const float* __restrict__ dy,  // [n]
                                       unsigned long long n, unsigned long long seed, unsigned long long step,
                                       const unsigned int* __restrict__ device_step,  // [1] or null: step_of
                                       unsigned int threshold, float scale) {
  dropout_apply(dx, dy, n, seed, step_of(step, device_step), threshold, scale);
}

extern "C" __global__ void adam_step(float* __restrict__ p,        // [n] parameters
                                     float* __restrict__ m,        // [n] first moment
                                     float* __restrict__ v,        // [n] second moment
                                     const float* __restrict__ g,  // [n] gradient
                                     unsigned long long n, AdamScalars s_arg,
                                     const float* __restrict__ adam_table,          // [steps, 6] or unused
                                     const unsigned int* __restrict__ adam_step) {  // [1] or null (adam.cuh)
  const AdamScalars s = adam_scalars(s_arg, adam_table, adam_step);
  const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
  for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    float pi = p[i], mi = m[i], vi = v[i];
    adam_update(pi, mi, vi, g[i], s);
    p[i] = pi;
    m[i] = mi;
    v[i] = vi;
  }
}

// The batch of a step, from a data set resident in device memory: images[b] = data[first + b] and
// labels[b] = all_labels[first + b] for b < batch, where first = (*device_step · batch) mod span (the write-up's
// offset, Dataset::batch on the host, span = max(count − batch, 1)) or, without a counter, `start` (an
// evaluation's batch). A copy: the data set holds the host's normalised values, so the batch is the host's bit
// for bit. Grid-stride over the batch's pixels; the first batch threads copy the labels.
extern "C" __global__ void batch_gather(float* __restrict__ images,                   // [batch, px]
                                        unsigned int* __restrict__ labels,            // [batch]
                                        const float* __restrict__ data,               // [count, px]
                                        const unsigned int* __restrict__ all_labels,  // [count]
                                        const unsigned int* __restrict__ device_step, // [1] or null
                                        unsigned long long start, unsigned long long span, unsigned int batch,
                                        unsigned int px) {
  const unsigned long long first =
      device_step == nullptr ? start : ((unsigned long long)*device_step * batch) % span;
  const unsigned long long n = (unsigned long long)batch * px;
  const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
  const unsigned long long t = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
  const float* src = data + first * px;
  for (unsigned long long i = t; i < n; i += stride) images[i] = src[i];
  for (unsigned long long b = t; b < batch; b += stride) labels[b] = all_labels[first + b];
}

// The end of a training step on the device: losses[*device_step % ring] = loss[0] (the loss history read at
// logging points), then *device_step += 1. One thread: the step's last launch, so every launch of the step
// before it read the counter of this step.
extern "C" __global__ void step_end(float* __restrict__ losses,                // [ring]
                                    unsigned int* __restrict__ device_step,    // [1]
                                    const float* __restrict__ loss,            // [1]
                                    unsigned int ring) {
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    const unsigned int s = *device_step;
    losses[s % ring] = loss[0];
    *device_step = s + 1u;
  }
}
