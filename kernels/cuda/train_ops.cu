// Training kernels of the CuPy backend besides the LSTM steps: softmax cross-entropy,
// Adam, the gradient norm, and the embedding gather / scatter-add.
//
// Loaded by lstm_engine/backends/cupy_kernels.py (cupy.RawModule + name_expressions);
// `nvcc --ptx` compiles the same text in tests/backends/test_cupy_host.py.  No #include (NVRTC).
//
// Dimension legend:
//   N  rows (= T*B time steps x batch)     V  vocabulary size     E  embedding size
//   NT threads per block (256)             n  elements of one parameter tensor

#define NT 256
#define FULL_MASK 0xffffffffu

__device__ __forceinline__ float exp_(float x) { return expf(x); }
__device__ __forceinline__ double exp_(double x) { return exp(x); }
__device__ __forceinline__ float log_(float x) { return logf(x); }
__device__ __forceinline__ double log_(double x) { return log(x); }
__device__ __forceinline__ float sqrt_(float x) { return sqrtf(x); }
__device__ __forceinline__ double sqrt_(double x) { return sqrt(x); }
__device__ __forceinline__ float max_(float a, float b) { return fmaxf(a, b); }
__device__ __forceinline__ double max_(double a, double b) { return fmax(a, b); }
__device__ __forceinline__ float neg_inf(float) { return __int_as_float((int)0xff800000); }
__device__ __forceinline__ double neg_inf(double) { return __longlong_as_double(0xfff0000000000000LL); }
__device__ __forceinline__ float nan_(float) { return __int_as_float((int)0x7fc00000); }
__device__ __forceinline__ double nan_(double) { return __longlong_as_double(0x7ff8000000000000LL); }

// Block-wide sum / max over NT threads; every thread gets the result.  The order of the
// additions is fixed, so results are reproducible run to run.
template <typename T>
__device__ T block_sum(T v) {
    __shared__ T part[NT / 32];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = v;
    __syncthreads();
    T s = part[0];
    for (int w = 1; w < NT / 32; ++w) s += part[w];
    __syncthreads();   // part[] may be reused by the next call
    return s;
}

template <typename T>
__device__ T block_max(T v) {
    __shared__ T part[NT / 32];
    for (int o = 16; o > 0; o >>= 1) v = max_(v, __shfl_xor_sync(FULL_MASK, v, o));
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = v;
    __syncthreads();
    T m = part[0];
    for (int w = 1; w < NT / 32; ++w) m = max_(m, part[w]);
    __syncthreads();
    return m;
}

// ---------------------------------------------------------------------------------------
// Softmax cross-entropy, forward and backward in one pass over each row.  grid N, block NT.
//   m = max_v z_v ;  lse = log sum_v exp(z_v - m) ;  logp_v = (z_v - m) - lse
//   loss_rows[n] = -logp_y                       (the host sums and divides by N)
//   dlogits[n,v] = (exp(logp_v) - [v == y]) / N  (skipped when dlogits is null)
// ---------------------------------------------------------------------------------------
template <typename T>
__global__ void __launch_bounds__(NT)
softmax_xent(const T* __restrict__ logits,   // (N,V)
             const int* __restrict__ targets, // (N,)
             T* __restrict__ loss_rows,      // (N,)
             T* __restrict__ dlogits,        // (N,V) or null
             int N, int V) {
    const int n = blockIdx.x;
    const T* z = logits + (long long)n * V;
    T m = neg_inf(T(0));
    for (int v = threadIdx.x; v < V; v += NT) m = max_(m, z[v]);
    m = block_max(m);
    T s = T(0);
    for (int v = threadIdx.x; v < V; v += NT) s += exp_(z[v] - m);
    const T lse = log_(block_sum(s));
    const int y = targets[n];
    if (threadIdx.x == 0) loss_rows[n] = -((z[y] - m) - lse);
    if (dlogits != nullptr) {
        T* d = dlogits + (long long)n * V;
        for (int v = threadIdx.x; v < V; v += NT) {
            T p = exp_((z[v] - m) - lse);     // softmax
            if (v == y) p -= T(1);            // d(-log p_y)/dz = p - onehot
            d[v] = p / T(N);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Adam with bias correction over several tensors in one launch (as numpy_backend.adam_update).
// table (5*nt,) uint64: [p, g, m, v] pointers per tensor, then the nt element counts.
//   g' = g * grad_scale
//   m = beta1 * m + (1 - beta1) * g'          v = beta2 * v + (1 - beta2) * g'^2
//   p -= lr * (m / bc1) / (sqrt(v / bc2) + eps)      bc1 = 1 - beta1^step, bc2 = 1 - beta2^step
// omb1 = 1 - beta1 and omb2 = 1 - beta2 come from the host (computed in double, as numpy does).
// ---------------------------------------------------------------------------------------
template <typename T>
__global__ void __launch_bounds__(NT)
adam_multi(const unsigned long long* __restrict__ table, int nt,
           T lr, T beta1, T omb1, T beta2, T omb2, T eps, T bc1, T bc2, T grad_scale) {
    const long long start = (long long)blockIdx.x * NT + threadIdx.x;
    const long long stride = (long long)gridDim.x * NT;
    for (int k = 0; k < nt; ++k) {
        T* p = (T*)table[4 * k];
        const T* g = (const T*)table[4 * k + 1];
        T* m = (T*)table[4 * k + 2];
        T* v = (T*)table[4 * k + 3];
        const long long n = (long long)table[4 * nt + k];
        for (long long e = start; e < n; e += stride) {
            const T gs = g[e] * grad_scale;
            const T me = m[e] * beta1 + omb1 * gs;          // first moment
            const T ve = v[e] * beta2 + (omb2 * gs) * gs;   // second moment
            m[e] = me;
            v[e] = ve;
            p[e] -= (lr * (me / bc1)) / (sqrt_(ve / bc2) + eps);
        }
    }
}

// Sum of squares over several tensors; one partial sum (double) per block, summed on the host
// in a fixed order.  table (2*nt,) uint64: pointers, then element counts.  grid fixed by the host.
template <typename T>
__global__ void __launch_bounds__(NT)
sumsq_multi(const unsigned long long* __restrict__ table, int nt, double* __restrict__ partials) {
    const long long start = (long long)blockIdx.x * NT + threadIdx.x;
    const long long stride = (long long)gridDim.x * NT;
    double acc = 0.0;
    for (int k = 0; k < nt; ++k) {
        const T* g = (const T*)table[k];
        const long long n = (long long)table[nt + k];
        for (long long e = start; e < n; e += stride) {
            const double x = (double)g[e];
            acc += x * x;
        }
    }
    acc = block_sum(acc);
    if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

// ---------------------------------------------------------------------------------------
// Embedding.  One thread per (row n, column e); grid ceil(N*E/NT).
//   gather:       x[n, e] = Emb[tok[n], e]          (NaN for an id outside [0, V): loud, not OOB)
//   scatter-add:  dEmb[tok[n], e] += dx[n, e]       with atomicAdd: rows that share a token
//                 collide, and atomics avoid sorting the tokens (double atomicAdd needs sm_60+).
//                 The order of the additions varies, so dEmb can differ in the last bit.
// ---------------------------------------------------------------------------------------
template <typename T>
__global__ void __launch_bounds__(NT)
embed_gather(const T* __restrict__ Emb, const int* __restrict__ tok, T* __restrict__ x,
             long long N, int E, int V) {
    const long long i = (long long)blockIdx.x * NT + threadIdx.x;
    if (i >= N * E) return;
    const long long n = i / E;
    const int e = (int)(i % E), id = tok[n];
    x[i] = (id >= 0 && id < V) ? Emb[(long long)id * E + e] : nan_(T(0));
}

template <typename T>
__global__ void __launch_bounds__(NT)
embed_scatter_add(const T* __restrict__ dx, const int* __restrict__ tok, T* __restrict__ dEmb,
                  long long N, int E, int V) {
    const long long i = (long long)blockIdx.x * NT + threadIdx.x;
    if (i >= N * E) return;
    const long long n = i / E;
    const int e = (int)(i % E), id = tok[n];
    if (id >= 0 && id < V) atomicAdd(dEmb + (long long)id * E + e, dx[i]);
}
