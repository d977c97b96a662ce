// Sampling kernel of the CuPy backend: picks the next token of S sequences on the device, with
// the semantics of numpy_backend.filter_probs / sample_index / argmax, so generation never
// returns to the host between tokens.
//
// Loaded by lstm_engine/backends/cupy_kernels.py (cupy.RawModule + name_expressions);
// `nvcc --ptx` compiles the same text in tests/backends/test_cupy_host.py.  No #include (NVRTC).
//
// Dimension legend:
//   S  sequences sampled at once (one thread block each)    V  vocabulary size
//   Vp the smallest power of two >= V (length of the sort scratch)     NT threads per block
//
// Per sequence, from its logits z (V,):
//   greedy:   token = argmax_v z_v (the first index among equal maxima, as np.argmax)
//   else      zt = double(z) / temperature
//     top-k / top-p off (top_k = 0 or >= V, top_p = 1):  p = softmax(zt) in index order
//     else: sort (zt desc, index asc) = the stable order of np.argsort(-zt, kind="stable");
//           keep the first k;  p_r = exp(zt_r - zt_0) / sum;  top-p keeps the shortest
//           prefix whose cumulative p reaches top_p;  renormalise; scatter back to index order
//     token = the first index whose cumulative p (index order) exceeds u * total   (inverse CDF)
// u comes from the host's numpy Generator (one draw per sequence and token), so a seeded run
// draws the same numbers as the reference.

#define NT 256
#define FULL_MASK 0xffffffffu

__device__ __forceinline__ double neg_inf_d() { return __longlong_as_double(0xfff0000000000000LL); }

__device__ double block_sum_d(double v) {
    __shared__ double part[NT / 32];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = v;
    __syncthreads();
    double s = part[0];
    for (int w = 1; w < NT / 32; ++w) s += part[w];
    __syncthreads();
    return s;
}

__device__ double block_max_d(double v) {
    __shared__ double part[NT / 32];
    for (int o = 16; o > 0; o >>= 1) v = fmax(v, __shfl_xor_sync(FULL_MASK, v, o));
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = v;
    __syncthreads();
    double m = part[0];
    for (int w = 1; w < NT / 32; ++w) m = fmax(m, part[w]);
    __syncthreads();
    return m;
}

__device__ int block_min_i(int v) {
    __shared__ int part[NT / 32];
    for (int o = 16; o > 0; o >>= 1) v = min(v, __shfl_xor_sync(FULL_MASK, v, o));
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = v;
    __syncthreads();
    int m = part[0];
    for (int w = 1; w < NT / 32; ++w) m = min(m, part[w]);
    __syncthreads();
    return m;
}

// Block-wide argmax of a row of V values in T: the first index among equal maxima.
template <typename T>
__device__ int block_argmax(const T* z, int V) {
    __shared__ T pv[NT / 32];
    __shared__ int pi[NT / 32];
    T bv = z[0];
    int bi = 0;
    for (int v = threadIdx.x; v < V; v += NT)            // each thread scans upwards: keeps its first max
        if (z[v] > bv || (z[v] == bv && v < bi)) { bv = z[v]; bi = v; }
    for (int o = 16; o > 0; o >>= 1) {
        const T ov = __shfl_xor_sync(FULL_MASK, bv, o);
        const int oi = __shfl_xor_sync(FULL_MASK, bi, o);
        if (ov > bv || (ov == bv && oi < bi)) { bv = ov; bi = oi; }
    }
    if ((threadIdx.x & 31) == 0) { pv[threadIdx.x >> 5] = bv; pi[threadIdx.x >> 5] = bi; }
    __syncthreads();
    bv = pv[0];
    bi = pi[0];
    for (int w = 1; w < NT / 32; ++w)
        if (pv[w] > bv || (pv[w] == bv && pi[w] < bi)) { bv = pv[w]; bi = pi[w]; }
    __syncthreads();
    return bi;
}

// Cumulative-sum search over a[0..n) in index order: thread t owns the contiguous segment
// [t*seg, (t+1)*seg); a warp scan of the segment sums gives each segment its offset.
// Returns the first i whose cumulative sum is > target (strict) or >= target (!strict), or n.
// With relative = true the target is frac * total, total being the sum of all n values.
__device__ int block_find_cumulative(const double* a, int n, double frac, bool relative, bool strict) {
    __shared__ double wsum[NT / 32];
    const int seg = (n + NT - 1) / NT;
    const int lo = min(n, (int)threadIdx.x * seg), hi = min(n, lo + seg);
    double local = 0.0;
    for (int i = lo; i < hi; ++i) local += a[i];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    double incl = local;                                  // inclusive scan within the warp
    for (int o = 1; o < 32; o <<= 1) {
        const double y = __shfl_up_sync(FULL_MASK, incl, o);
        if (lane >= o) incl += y;
    }
    double excl = __shfl_up_sync(FULL_MASK, incl, 1);     // exclusive: the lane before
    if (lane == 0) excl = 0.0;
    if (lane == 31) wsum[warp] = incl;
    __syncthreads();
    double total = 0.0, offset = 0.0;
    for (int w = 0; w < NT / 32; ++w) {
        if (w == warp) offset = total;
        total += wsum[w];
    }
    __syncthreads();
    const double target = relative ? frac * total : frac;
    double c = offset + excl;
    int found = n;
    for (int i = lo; i < hi; ++i) {
        c += a[i];
        if (strict ? (c > target) : (c >= target)) { found = i; break; }
    }
    return block_min_i(found);
}

// Bitonic sort of (key, id) pairs of length n (a power of two) into the order
// "key descending, id ascending among equal keys", in global scratch (visible to the
// whole block after each __syncthreads).
__device__ void bitonic_sort_desc(double* key, int* id, int n) {
    for (int k = 2; k <= n; k <<= 1) {
        for (int j = k >> 1; j > 0; j >>= 1) {
            for (int i = threadIdx.x; i < n; i += NT) {
                const int l = i ^ j;
                if (l <= i) continue;
                const double ki = key[i], kl = key[l];
                const int ii = id[i], il = id[l];
                const bool l_first = (kl > ki) || (kl == ki && il < ii);
                const bool i_first = (ki > kl) || (ki == kl && ii < il);
                if (((i & k) == 0) ? l_first : i_first) {
                    key[i] = kl; key[l] = ki;
                    id[i] = il; id[l] = ii;
                }
            }
            __syncthreads();
        }
    }
}

// Probabilities p (V,) in index order after temperature, top-k and top-p, for one sequence.
template <typename T>
__device__ void filtered_probs(const T* z, int V, int Vp, double temperature, int top_k, double top_p,
                               double* key, int* id, double* p) {
    const bool filtered = (top_k > 0 && top_k < V) || top_p < 1.0;
    if (!filtered) {                                     // plain softmax(z / temperature)
        double m = neg_inf_d();
        for (int v = threadIdx.x; v < V; v += NT) m = fmax(m, (double)z[v] / temperature);
        m = block_max_d(m);
        double s = 0.0;
        for (int v = threadIdx.x; v < V; v += NT) {
            const double e = exp((double)z[v] / temperature - m);
            p[v] = e;
            s += e;
        }
        s = block_sum_d(s);
        double s2 = 0.0;
        for (int v = threadIdx.x; v < V; v += NT) { p[v] /= s; s2 += p[v]; }
        s2 = block_sum_d(s2);                            // the reference normalises twice
        for (int v = threadIdx.x; v < V; v += NT) p[v] /= s2;
        __syncthreads();
        return;
    }
    for (int r = threadIdx.x; r < Vp; r += NT) {         // pad with -inf, ids past V: sorted last
        key[r] = r < V ? (double)z[r] / temperature : neg_inf_d();
        id[r] = r;
    }
    __syncthreads();
    bitonic_sort_desc(key, id, Vp);
    const int keep = (top_k > 0 && top_k < V) ? top_k : V;
    const double zmax = key[0];
    __syncthreads();                                     // everyone has read key[0]
    double s = 0.0;
    for (int r = threadIdx.x; r < keep; r += NT) { key[r] = exp(key[r] - zmax); s += key[r]; }
    s = block_sum_d(s);
    for (int r = threadIdx.x; r < keep; r += NT) key[r] /= s;
    __syncthreads();
    int keep2 = keep;
    if (top_p < 1.0) {                                   // np.searchsorted(cumsum(p), top_p) + 1
        const int cut = block_find_cumulative(key, keep, top_p, false, false);
        keep2 = min(keep, cut + 1);
    }
    double s2 = 0.0;
    for (int r = threadIdx.x; r < keep2; r += NT) s2 += key[r];
    s2 = block_sum_d(s2);
    for (int v = threadIdx.x; v < V; v += NT) p[v] = 0.0;
    __syncthreads();
    for (int r = threadIdx.x; r < keep2; r += NT) p[id[r]] = key[r] / s2;
    __syncthreads();
}

// One token for each of S sequences.  grid S, block NT.
//   params (3,) double: temperature, top_p, top_k (as a double; 0 = off)
//   u (S,) uniforms in [0,1) for this step (null when greedy)
//   key (S,Vp), id (S,Vp), p (S,V): scratch; p holds the filtered probabilities afterwards
//   tok_out (S,) the next input token;  ids_out (S,) the same, into the output record (or null)
template <typename T>
__global__ void __launch_bounds__(NT)
sample_tokens(const T* __restrict__ logits, int S, int V, int Vp,
              const double* __restrict__ u, const double* __restrict__ params, int greedy,
              double* key, int* id, double* p, int* __restrict__ tok_out, int* __restrict__ ids_out) {
    const int s = blockIdx.x;
    const T* z = logits + (long long)s * V;
    int token;
    if (greedy) {
        token = block_argmax(z, V);
    } else {
        double* ps = p + (long long)s * V;
        filtered_probs(z, V, Vp, params[0], (int)params[2], params[1],
                       key + (long long)s * Vp, id + (long long)s * Vp, ps);
        token = min(block_find_cumulative(ps, V, u[s], true, true), V - 1);
    }
    if (threadIdx.x == 0) {
        tok_out[s] = token;
        if (ids_out != nullptr) ids_out[s] = token;
    }
}
