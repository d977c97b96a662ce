// LSTM kernels of the CuPy backend: the per-step work of the time loop, forward and backward,
// for training (a window of T steps) and for generation (one step of every layer).
//
// Loaded by lstm_engine/backends/cupy_kernels.py through cupy.RawModule; the template
// instantiations it asks for (name_expressions) are listed there.  No #include: NVRTC
// compiles this text as is, and `nvcc --ptx` compiles the very same text in the tests.
//
// Dimension legend (every shape comment below uses it):
//   T  time steps of a window      B  batch rows (streams, or sequences being sampled)
//   H  hidden size                 I  input size of the layer (E for layer 0, H above)
//   G  = 4H gate columns: blocks i | f | g | o of H columns each (PyTorch's order)
//   K  length of a reduction       V  vocabulary size
// All arrays are row-major (C order).  The fused weight of a layer is W (H+I, G) over the
// concatenation [h_{t-1}, x_t]: rows 0..H-1 are W_h, rows H..H+I-1 are W_x.
//
// Forward equations, per batch row and hidden unit j:
//   z_t = x_t W_x + b + h_{t-1} W_h                       (G gate pre-activations)
//   i = sigmoid(z_i)  f = sigmoid(z_f)  g = tanh(z_g)  o = sigmoid(z_o)
//   c_t = f * c_{t-1} + i * g
//   h_t = o * tanh(c_t)
// Backward (mirrors the forward in reverse; dh = dL/dh_t from above plus from step t+1):
//   do = dh * tanh(c_t)
//   dc = dc_{t+1} + dh * o * (1 - tanh(c_t)^2)
//   di = dc * g   dg = dc * i   df = dc * c_{t-1}   dc_{t-1} = dc * f
//   dz_i = di * i(1-i)   dz_f = df * f(1-f)   dz_g = dg * (1-g^2)   dz_o = do * o(1-o)
//   dh_{t-1} (recurrent part) = dz_t W_h^T
//
// Buffers of a training window:
//   xproj (T,B,G)   x_t W_x for all t: one cuBLAS product before the loop (bias added here)
//   hbuf  (T+1,B,H) slot 0 = h_0, slot t+1 = h_t      cbuf (T+1,B,H) likewise for c
//   acts  (T,B,G)   activated gates i,f,g,o per step (the cache of the backward)
//   dzs   (T,B,G)   dL/dz_t;  dc (B,H) the running dL/dc, in: dc_T, out: dc_0
//
// Three ways to run the time loop (chosen on the host, see cupy_backend.step_mode):
//   fused  : one kernel per step = the recurrent product (a tiled GEMM in shared memory)
//            with the gate equations as its epilogue; capturable in a CUDA graph.
//   cublas : cuBLAS computes h_{t-1} W_h (or dz_{t+1} W_h^T) and a cell kernel does the rest:
//            two launches per step; captured only when cuBLAS is called through ctypes
//            (cupy_kernels.CublasCtypes: CuPy's own binding refuses calls during a capture).
//   persist: one kernel for all T steps of a layer, W_h slices in shared memory (below).

// ---------------------------------------------------------------------------------------
// Scalar helpers: float and double overloads of the math functions
// ---------------------------------------------------------------------------------------
__device__ __forceinline__ float exp_(float x) { return expf(x); }
__device__ __forceinline__ double exp_(double x) { return exp(x); }
__device__ __forceinline__ float tanh_(float x) { return tanhf(x); }
__device__ __forceinline__ double tanh_(double x) { return tanh(x); }

// sigmoid split by sign so that exp never overflows (as numpy_backend.sigmoid)
template <typename T>
__device__ __forceinline__ T sigmoid_(T z) {
    if (z >= T(0)) return T(1) / (T(1) + exp_(-z));
    const T e = exp_(z);
    return e / (T(1) + e);
}

// ---------------------------------------------------------------------------------------
// The cell: forward and backward of one (batch row, hidden unit), shared by all kernels
// ---------------------------------------------------------------------------------------
template <typename T>
__device__ __forceinline__ void cell_forward(T zi, T zf, T zg, T zo, T c_prev,
                                             T& i, T& f, T& g, T& o, T& c, T& h) {
    i = sigmoid_(zi);
    f = sigmoid_(zf);
    g = tanh_(zg);
    o = sigmoid_(zo);
    c = f * c_prev + i * g;          // c_t = f * c_{t-1} + i * g
    h = o * tanh_(c);                // h_t = o * tanh(c_t)
}

template <typename T>
__device__ __forceinline__ void cell_backward(T dh, T dc_next, T i, T f, T g, T o, T c, T c_prev,
                                              T& dzi, T& dzf, T& dzg, T& dzo, T& dc_prev) {
    const T tc = tanh_(c);
    const T d_o = dh * tc;                             // h = o * tanh(c)
    const T dc = dc_next + dh * o * (T(1) - tc * tc);  // through tanh: 1 - tanh(c)^2
    const T di = dc * g;                               // c = f*c_prev + i*g
    const T dg = dc * i;
    const T df = dc * c_prev;
    dc_prev = dc * f;
    dzi = di * i * (T(1) - i);                         // through sigmoid: s(1-s)
    dzf = df * f * (T(1) - f);
    dzg = dg * (T(1) - g * g);                         // through tanh: 1 - g^2
    dzo = d_o * o * (T(1) - o);
}

// ---------------------------------------------------------------------------------------
// Tiled product with NG column groups, the core of every fused kernel
//
//   acc[rb][g][rj] += sum_k A(b, k) * Wop(k, g*colstride + j)
//   b = b0 + ty + rb*TY  (batch row),  j = j0 + tx + rj*TX  (unit / column),  k < K1 + K2
//
// A (rows of B) is the concatenation [A1 (B,K1) | A2 (.,K2)]; row b of A2 is a2_rows[b]
// when a2_rows is given (an embedding lookup), else b.
// Wop(k, col) = W[k*ldw + col] (TRANS_W false) or W[col*ldw + k] (TRANS_W true, NG = 1):
// the transposed form reads W_h^T for the backward without copying it.
// One thread block computes a BT x JT tile of (rows, units) for all NG groups; each of the
// TX*TY threads owns RB rows x RJ units, strided so shared-memory reads are conflict-free.
// ---------------------------------------------------------------------------------------
#define KT 16            // reduction slice staged in shared memory per iteration
#define THREADS 256      // every tiled config uses 256 threads: (JT/RJ) * (BT/RB) == 256

// A(b, k): row b of [A1 | A2], zero outside the matrix
template <typename T>
__device__ __forceinline__ T a_value(const T* A1, int K1, const T* A2, int K2, const int* a2_rows,
                                     int B, int b, int k) {
    if (b >= B || k >= K1 + K2) return T(0);
    if (k < K1) return A1[(long long)b * K1 + k];
    const int row = a2_rows ? a2_rows[b] : b;
    return A2[(long long)row * K2 + (k - K1)];
}

// Wop(k, g*colstride + j), zero outside the matrix
template <typename T, bool TRANS_W>
__device__ __forceinline__ T w_value(const T* W, int ldw, int colstride, int N, int K, int k, int g, int j) {
    if (j >= N || k >= K) return T(0);
    return TRANS_W ? W[(long long)j * ldw + k] : W[(long long)k * ldw + g * colstride + j];
}

// Where staged element e of a slice goes.  A: (kk, bb) with kk fastest (coalesced along k).
// W: (kk, g, jj) with jj fastest (coalesced along j), or kk fastest for the transposed operand.
__device__ __forceinline__ void a_slot(int e, int& kk, int& bb) { kk = e % KT; bb = e / KT; }

template <int JT, int NG, bool TRANS_W>
__device__ __forceinline__ void w_slot(int e, int& kk, int& g, int& jj) {
    if (!TRANS_W) { jj = e % JT; g = (e / JT) % NG; kk = e / (JT * NG); }
    else          { kk = e % KT; jj = e / KT; g = 0; }
}

// Load the K slice starting at k0 into registers: NA values of A and NW of W per thread.
template <typename T, int BT, int JT, int NG, bool TRANS_W, int NA, int NW>
__device__ __forceinline__ void load_slice(T (&ra)[NA], T (&rw)[NW], int k0,
                                           const T* A1, int K1, const T* A2, int K2, const int* a2_rows,
                                           const T* W, int ldw, int colstride, int B, int N, int b0, int j0) {
    int kk, bb, g, jj;
#pragma unroll
    for (int q = 0; q < NA; ++q) {
        const int e = threadIdx.x + q * THREADS;
        a_slot(e, kk, bb);
        ra[q] = e < BT * KT ? a_value(A1, K1, A2, K2, a2_rows, B, b0 + bb, k0 + kk) : T(0);
    }
#pragma unroll
    for (int q = 0; q < NW; ++q) {
        const int e = threadIdx.x + q * THREADS;
        w_slot<JT, NG, TRANS_W>(e, kk, g, jj);
        rw[q] = e < KT * NG * JT ? w_value<T, TRANS_W>(W, ldw, colstride, N, K1 + K2, k0 + kk, g, j0 + jj) : T(0);
    }
}

// acc[rb][g][rj] += sum_k A(b,k) Wop(k, g*colstride + j); the caller initialises acc (with the
// bias, the input projection, or zero).  Software pipelined: the next K slice travels from
// global memory into registers while the current one is multiplied out of shared memory.
template <typename T, int BT, int JT, int RB, int RJ, int NG, bool TRANS_W>
__device__ __forceinline__ void tile_product(T (&acc)[RB][NG][RJ],
                                             const T* A1, int K1,
                                             const T* A2, int K2, const int* a2_rows,
                                             const T* W, int ldw, int colstride,
                                             int B, int N, int b0, int j0) {
    static_assert(!TRANS_W || NG == 1, "the transposed operand has one column group");
    constexpr int TX = JT / RJ, TY = BT / RB;
    static_assert(TX * TY == THREADS, "tile config must use THREADS threads");
    constexpr int NA = (BT * KT + THREADS - 1) / THREADS;        // A values staged per thread
    constexpr int NW = (KT * NG * JT + THREADS - 1) / THREADS;   // W values staged per thread
    __shared__ T As[KT][BT + 1];        // As[kk][bb] = A(b0+bb, k0+kk)
    __shared__ T Ws[KT][NG][JT + 1];    // Ws[kk][g][jj] = Wop(k0+kk, g*colstride + j0+jj)
    const int tid = threadIdx.x, tx = tid % TX, ty = tid / TX;
    const int K = K1 + K2;
    T ra[NA], rw[NW];
    load_slice<T, BT, JT, NG, TRANS_W>(ra, rw, 0, A1, K1, A2, K2, a2_rows, W, ldw, colstride, B, N, b0, j0);
    for (int k0 = 0; k0 < K; k0 += KT) {
        int kk, bb, g, jj;
#pragma unroll
        for (int q = 0; q < NA; ++q) {                   // registers -> shared memory
            const int e = tid + q * THREADS;
            a_slot(e, kk, bb);
            if (e < BT * KT) As[kk][bb] = ra[q];
        }
#pragma unroll
        for (int q = 0; q < NW; ++q) {
            const int e = tid + q * THREADS;
            w_slot<JT, NG, TRANS_W>(e, kk, g, jj);
            if (e < KT * NG * JT) Ws[kk][g][jj] = rw[q];
        }
        __syncthreads();
        if (k0 + KT < K)                                 // the next slice is in flight during the math
            load_slice<T, BT, JT, NG, TRANS_W>(ra, rw, k0 + KT, A1, K1, A2, K2, a2_rows, W, ldw, colstride,
                                               B, N, b0, j0);
#pragma unroll
        for (int k = 0; k < KT; ++k) {
            T a[RB];
#pragma unroll
            for (int rb = 0; rb < RB; ++rb) a[rb] = As[k][ty + rb * TY];
#pragma unroll
            for (int gi = 0; gi < NG; ++gi)
#pragma unroll
                for (int rj = 0; rj < RJ; ++rj) {
                    const T w = Ws[k][gi][tx + rj * TX];
#pragma unroll
                    for (int rb = 0; rb < RB; ++rb) acc[rb][gi][rj] += a[rb] * w;
                }
        }
        __syncthreads();
    }
}

// ---------------------------------------------------------------------------------------
// Training, fused path: one launch per time step.  Pointers come from a small device struct
// (filled by the host before every window) so that a CUDA graph captured once can be
// replayed on new buffers; the field order must match FWD_FIELDS / BWD_FIELDS in
// lstm_engine/backends/cupy_kernels.py (a host test compares them).
// ---------------------------------------------------------------------------------------
template <typename T>
struct FwdPtrs {
    const T* xproj;   // (T,B,G)   x_t W_x, no bias
    const T* W;       // (H+I,G)   rows 0..H-1 = W_h
    const T* b;       // (G,)
    T* hbuf;          // (T+1,B,H)
    T* cbuf;          // (T+1,B,H)
    T* acts;          // (T,B,G)
};

template <typename T>
struct BwdPtrs {
    const T* W;       // (H+I,G)   rows 0..H-1 = W_h
    const T* acts;    // (T,B,G)
    const T* cbuf;    // (T+1,B,H)
    const T* dhs;     // (T,B,H)   dL/dh_t from the layer above
    const T* dhT;     // (B,H)     dL/dh_T from the next window
    T* dzs;           // (T,B,G)
    T* dc;            // (B,H)     running dL/dc: dc_T in, dc_0 out
};

// Step t forward: z = (xproj[t] + b) + h_{t-1} W_h, then the cell.  grid (ceil(H/JT), ceil(B/BT))
// The accumulators start at xproj[t] + b and c_{t-1} is read before the product, so those loads
// overlap the product's instead of following it.
template <typename T, int BT, int JT, int RB, int RJ>
__global__ void __launch_bounds__(THREADS)
lstm_fwd_fused(const FwdPtrs<T>* __restrict__ args, int t, int B, int H) {
    const FwdPtrs<T> p = *args;
    const int G = 4 * H, TX = JT / RJ, TY = BT / RB;
    const int j0 = blockIdx.x * JT, b0 = blockIdx.y * BT;
    const int tx = threadIdx.x % TX, ty = threadIdx.x / TX;
    const long long BH = (long long)B * H, BG = (long long)B * G;
    T acc[RB][4][RJ];        // z for the 4 gates of each owned (row, unit)
    T c_prev[RB][RJ];
#pragma unroll
    for (int rb = 0; rb < RB; ++rb)
#pragma unroll
        for (int rj = 0; rj < RJ; ++rj) {
            const int b = b0 + ty + rb * TY, j = j0 + tx + rj * TX;
            const bool in = b < B && j < H;
            const T* xp = p.xproj + t * BG + (long long)b * G;
#pragma unroll
            for (int g = 0; g < 4; ++g) acc[rb][g][rj] = in ? xp[g * H + j] + p.b[g * H + j] : T(0);
            c_prev[rb][rj] = in ? p.cbuf[t * BH + (long long)b * H + j] : T(0);
        }
    tile_product<T, BT, JT, RB, RJ, 4, false>(acc, p.hbuf + t * BH, H, nullptr, 0, nullptr,
                                               p.W, G, H, B, H, b0, j0);
#pragma unroll
    for (int rb = 0; rb < RB; ++rb)
#pragma unroll
        for (int rj = 0; rj < RJ; ++rj) {
            const int b = b0 + ty + rb * TY, j = j0 + tx + rj * TX;
            if (b >= B || j >= H) continue;
            T i, f, g, o, c, h;
            cell_forward(acc[rb][0][rj], acc[rb][1][rj], acc[rb][2][rj], acc[rb][3][rj], c_prev[rb][rj],
                         i, f, g, o, c, h);
            T* a = p.acts + t * BG + (long long)b * G;
            a[j] = i; a[H + j] = f; a[2 * H + j] = g; a[3 * H + j] = o;
            p.cbuf[(t + 1) * BH + (long long)b * H + j] = c;
            p.hbuf[(t + 1) * BH + (long long)b * H + j] = h;
        }
}

// Step t backward: dh = dhs[t] + (dz_{t+1} W_h^T, or dhT at the last step), then the cell
// backward writing dzs[t] and updating dc in place.  grid (ceil(H/JT), ceil(B/BT))
// The cell's operands are read before the product (their latency overlaps it).
template <typename T, int BT, int JT, int RB, int RJ>
__global__ void __launch_bounds__(THREADS)
lstm_bwd_fused(const BwdPtrs<T>* __restrict__ args, int t, int B, int H, int has_next) {
    const BwdPtrs<T> p = *args;
    const int G = 4 * H, TX = JT / RJ, TY = BT / RB;
    const int j0 = blockIdx.x * JT, b0 = blockIdx.y * BT;
    const int tx = threadIdx.x % TX, ty = threadIdx.x / TX;
    const long long BH = (long long)B * H, BG = (long long)B * G;
    T acc[RB][1][RJ];        // dh = dL/dh_t
    T op[RB][RJ][7];         // i, f, g, o, c_t, c_{t-1}, dc_t of each owned (row, unit)
#pragma unroll
    for (int rb = 0; rb < RB; ++rb)
#pragma unroll
        for (int rj = 0; rj < RJ; ++rj) {
            const int b = b0 + ty + rb * TY, j = j0 + tx + rj * TX;
            const bool in = b < B && j < H;
            const long long bh = (long long)b * H + j;
            const T* a = p.acts + t * BG + (long long)b * G;
            acc[rb][0][rj] = in ? p.dhs[t * BH + bh] + (has_next ? T(0) : p.dhT[bh]) : T(0);
#pragma unroll
            for (int g = 0; g < 4; ++g) op[rb][rj][g] = in ? a[g * H + j] : T(0);
            op[rb][rj][4] = in ? p.cbuf[(t + 1) * BH + bh] : T(0);
            op[rb][rj][5] = in ? p.cbuf[t * BH + bh] : T(0);
            op[rb][rj][6] = in ? p.dc[bh] : T(0);
        }
    if (has_next) {   // uniform over the block: the __syncthreads inside are safe
        tile_product<T, BT, JT, RB, RJ, 1, true>(acc, p.dzs + (t + 1) * BG, G, nullptr, 0, nullptr,
                                                  p.W, G, 0, B, H, b0, j0);
    }
#pragma unroll
    for (int rb = 0; rb < RB; ++rb)
#pragma unroll
        for (int rj = 0; rj < RJ; ++rj) {
            const int b = b0 + ty + rb * TY, j = j0 + tx + rj * TX;
            if (b >= B || j >= H) continue;
            const T* q = op[rb][rj];
            T dzi, dzf, dzg, dzo, dc_prev;
            cell_backward(acc[rb][0][rj], q[6], q[0], q[1], q[2], q[3], q[4], q[5],
                          dzi, dzf, dzg, dzo, dc_prev);
            T* dz = p.dzs + t * BG + (long long)b * G;
            dz[j] = dzi; dz[H + j] = dzf; dz[2 * H + j] = dzg; dz[3 * H + j] = dzo;
            p.dc[(long long)b * H + j] = dc_prev;
        }
}

// ---------------------------------------------------------------------------------------
// Training, cuBLAS path: the recurrent product comes from cuBLAS, these do the cell.
// One thread per (batch row, unit); grid ceil(B*H/256).
// ---------------------------------------------------------------------------------------
template <typename T>
__global__ void lstm_fwd_cell(const T* __restrict__ xproj_t,   // (B,G) x_t W_x
                              const T* __restrict__ bias,      // (G,)
                              const T* __restrict__ zrec,      // (B,G) h_{t-1} W_h
                              const T* __restrict__ c_prev,    // (B,H)
                              T* __restrict__ acts_t,          // (B,G) out
                              T* __restrict__ c_out,           // (B,H) out
                              T* __restrict__ h_out,           // (B,H) out
                              int B, int H) {
    const long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= (long long)B * H) return;
    const int b = (int)(e / H), j = (int)(e % H), G = 4 * H;
    const T* xp = xproj_t + (long long)b * G;
    const T* zr = zrec + (long long)b * G;
    const T zi = (xp[j] + bias[j]) + zr[j];
    const T zf = (xp[H + j] + bias[H + j]) + zr[H + j];
    const T zg = (xp[2 * H + j] + bias[2 * H + j]) + zr[2 * H + j];
    const T zo = (xp[3 * H + j] + bias[3 * H + j]) + zr[3 * H + j];
    T i, f, g, o, c, h;
    cell_forward(zi, zf, zg, zo, c_prev[e], i, f, g, o, c, h);
    T* a = acts_t + (long long)b * G;
    a[j] = i; a[H + j] = f; a[2 * H + j] = g; a[3 * H + j] = o;
    c_out[e] = c;
    h_out[e] = h;
}

template <typename T>
__global__ void lstm_bwd_cell(const T* __restrict__ dhs_t,     // (B,H) from the layer above
                              const T* __restrict__ dh_next,   // (B,H) dz_{t+1} W_h^T, or dhT
                              const T* __restrict__ acts_t,    // (B,G)
                              const T* __restrict__ c_t,       // (B,H)
                              const T* __restrict__ c_prev,    // (B,H)
                              T* __restrict__ dc,              // (B,H) in: dc_t, out: dc_{t-1}
                              T* __restrict__ dz_t,            // (B,G) out
                              int B, int H) {
    const long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= (long long)B * H) return;
    const int b = (int)(e / H), j = (int)(e % H), G = 4 * H;
    const T* a = acts_t + (long long)b * G;
    T dzi, dzf, dzg, dzo, dc_prev;
    cell_backward(dhs_t[e] + dh_next[e], dc[e], a[j], a[H + j], a[2 * H + j], a[3 * H + j],
                  c_t[e], c_prev[e], dzi, dzf, dzg, dzo, dc_prev);
    T* dz = dz_t + (long long)b * G;
    dz[j] = dzi; dz[H + j] = dzf; dz[2 * H + j] = dzg; dz[3 * H + j] = dzo;
    dc[e] = dc_prev;
}

// ---------------------------------------------------------------------------------------
// Generation: one step of one layer for S sequences (B = S), input read in place:
//   z = b + [h_{t-1}, x_t] W      with x_t = Emb[token] (layer 0, x_rows = tokens) or the
//   new h of the layer below.  Pointers are plain arguments: a generation graph is keyed
//   by them on the host.  grid (ceil(H/JT), ceil(S/BT))
// ---------------------------------------------------------------------------------------
template <typename T, int BT, int JT, int RB, int RJ>
__global__ void __launch_bounds__(THREADS)
gen_lstm_step(const T* __restrict__ W,        // (H+I,G)
              const T* __restrict__ bias,     // (G,)
              const T* __restrict__ h_prev,   // (S,H)
              const T* __restrict__ c_prev,   // (S,H)
              const T* __restrict__ x,        // (S,I), or Emb (V,I) with x_rows
              const int* __restrict__ x_rows, // (S,) token ids, or null
              int I,
              T* __restrict__ h_out,          // (S,H)
              T* __restrict__ c_out,          // (S,H)
              int S, int H) {
    const int G = 4 * H, TX = JT / RJ, TY = BT / RB;
    const int j0 = blockIdx.x * JT, b0 = blockIdx.y * BT;
    const int tx = threadIdx.x % TX, ty = threadIdx.x / TX;
    T acc[RB][4][RJ];        // z, starting at the bias
    T cp[RB][RJ];
#pragma unroll
    for (int rb = 0; rb < RB; ++rb)
#pragma unroll
        for (int rj = 0; rj < RJ; ++rj) {
            const int s = b0 + ty + rb * TY, j = j0 + tx + rj * TX;
            const bool in = s < S && j < H;
#pragma unroll
            for (int g = 0; g < 4; ++g) acc[rb][g][rj] = in ? bias[g * H + j] : T(0);
            cp[rb][rj] = in ? c_prev[(long long)s * H + j] : T(0);
        }
    tile_product<T, BT, JT, RB, RJ, 4, false>(acc, h_prev, H, x, I, x_rows, W, G, H, S, H, b0, j0);
#pragma unroll
    for (int rb = 0; rb < RB; ++rb)
#pragma unroll
        for (int rj = 0; rj < RJ; ++rj) {
            const int s = b0 + ty + rb * TY, j = j0 + tx + rj * TX;
            if (s >= S || j >= H) continue;
            T i, f, g, o, c, h;
            cell_forward(acc[rb][0][rj], acc[rb][1][rj], acc[rb][2][rj], acc[rb][3][rj], cp[rb][rj],
                         i, f, g, o, c, h);
            c_out[(long long)s * H + j] = c;
            h_out[(long long)s * H + j] = h;
        }
}

// Output layer of generation: logits (S,V) = by (V,) + h (S,H) Wy (H,V).  grid (ceil(V/JT), ceil(S/BT))
template <typename T, int BT, int JT, int RB, int RJ>
__global__ void __launch_bounds__(THREADS)
gen_logits(const T* __restrict__ h, const T* __restrict__ Wy, const T* __restrict__ by,
           T* __restrict__ logits, int S, int H, int V) {
    const int TX = JT / RJ, TY = BT / RB;
    const int j0 = blockIdx.x * JT, b0 = blockIdx.y * BT;
    const int tx = threadIdx.x % TX, ty = threadIdx.x / TX;
    T acc[RB][1][RJ];
#pragma unroll
    for (int rb = 0; rb < RB; ++rb)
#pragma unroll
        for (int rj = 0; rj < RJ; ++rj) {
            const int v = j0 + tx + rj * TX;
            acc[rb][0][rj] = v < V ? by[v] : T(0);
        }
    tile_product<T, BT, JT, RB, RJ, 1, false>(acc, h, H, nullptr, 0, nullptr, Wy, V, 0, S, V, b0, j0);
#pragma unroll
    for (int rb = 0; rb < RB; ++rb)
#pragma unroll
        for (int rj = 0; rj < RJ; ++rj) {
            const int s = b0 + ty + rb * TY, v = j0 + tx + rj * TX;
            if (s < S && v < V) logits[(long long)s * V + v] = acc[rb][0][rj];
        }
}

// ---------------------------------------------------------------------------------------
// Training, persistent path: ONE launch per layer and window runs all T steps.  Block k owns
// the JU hidden units u0 = k*JU .. u0+JU-1 (all four gates) and keeps its slice of W_h in
// shared memory for the whole window; a grid barrier separates the steps.  Needs every block
// resident at once: the host launches at most one block per SM (grid <= SM count) and checks
// that the slice fits (cupy_backend.persist_plan).  Per step each (row b, unit u) pair is
// computed by KS threads (lanes of one warp) that split the reduction and add it up with
// shuffles; lane 0 of the group runs the cell.
// Data written by other blocks (h_{t-1}, dz_{t+1}) is read with __ldcg (L2, not a stale L1).
// ---------------------------------------------------------------------------------------
#ifndef DYN_SHARED
#define DYN_SHARED(name) extern __shared__ __align__(16) unsigned char name[]
#endif

// Grid barrier number `round` (1, 2, ...) on a counter the host zeroes before the launch.
// A bounded spin: a grid that is not all resident gives wrong numbers (caught by the parity
// tests) instead of a hang; *bar then stays short of the target, see the host check.
__device__ __forceinline__ void grid_barrier(unsigned int* bar, unsigned int round) {
    __syncthreads();
    if (threadIdx.x == 0) {
        __threadfence();
        atomicAdd(bar, 1u);
        const unsigned int target = round * gridDim.x;
        for (long long spin = 0; *(volatile unsigned int*)bar < target; ++spin) {
            if (spin > (1LL << 20)) { atomicAdd(bar + 1, 1u); break; }   // bar[1]: timeouts (~50 ms)
            __nanosleep(32);
        }
        __threadfence();
    }
    __syncthreads();
}

// sum over the KS lanes of a group (KS a power of two <= 32, groups aligned in the warp)
template <typename T, int KS>
__device__ __forceinline__ T group_sum(T v) {
#pragma unroll
    for (int off = KS / 2; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

// Forward over the window.  grid (ceil(H/JU)), smem 4*JU*H*sizeof(T): Ws[c*H + k] = W_h[k, g*H + u0+uu],
// c = g*JU + uu.  bar: 2 zeroed counters.
template <typename T, int KS>
__global__ void __launch_bounds__(THREADS)
lstm_fwd_persist(const FwdPtrs<T>* __restrict__ args, unsigned int* bar, int nT, int B, int H, int JU) {
    DYN_SHARED(smem_raw);
    T* Ws = reinterpret_cast<T*>(smem_raw);          // (4*JU, H)
    const FwdPtrs<T> p = *args;
    const int G = 4 * H, u0 = blockIdx.x * JU;
    const int nu = min(JU, H - u0);                  // units of this block (the last may have fewer)
    for (int e = threadIdx.x; e < 4 * JU * H; e += THREADS) {
        const int c = e / H, k = e % H, g = c / JU, uu = c % JU;
        Ws[e] = uu < nu ? p.W[(long long)k * G + g * H + u0 + uu] : T(0);
    }
    __syncthreads();
    const int lane = threadIdx.x % KS, grp = threadIdx.x / KS, NGRP = THREADS / KS;
    const int pairs = B * JU;
    const long long BH = (long long)B * H, BG = (long long)B * G;
    for (int t = 0; t < nT; ++t) {
        const T* hprev = p.hbuf + t * BH;             // (B,H) h_{t-1}
        for (int p0 = 0; p0 < pairs; p0 += NGRP) {   // uniform over the block: shuffles are safe
            const int pr = p0 + grp, b = pr / JU, uu = pr % JU;
            const bool in = pr < pairs && uu < nu;
            T z0 = T(0), z1 = T(0), z2 = T(0), z3 = T(0);
            if (in) {
                const T* hrow = hprev + (long long)b * H;
                const T* w = Ws + uu * H;
                const int JH = JU * H;
#pragma unroll 4
                for (int k = lane; k < H; k += KS) {
                    const T h = __ldcg(hrow + k);
                    z0 += h * w[k];
                    z1 += h * w[JH + k];
                    z2 += h * w[2 * JH + k];
                    z3 += h * w[3 * JH + k];
                }
            }
            z0 = group_sum<T, KS>(z0);
            z1 = group_sum<T, KS>(z1);
            z2 = group_sum<T, KS>(z2);
            z3 = group_sum<T, KS>(z3);
            if (in && lane == 0) {
                const int j = u0 + uu;
                const T* xp = p.xproj + t * BG + (long long)b * G;
                T i, f, g, o, c, h;
                cell_forward((xp[j] + p.b[j]) + z0, (xp[H + j] + p.b[H + j]) + z1,
                             (xp[2 * H + j] + p.b[2 * H + j]) + z2, (xp[3 * H + j] + p.b[3 * H + j]) + z3,
                             __ldcg(p.cbuf + t * BH + (long long)b * H + j), i, f, g, o, c, h);
                T* a = p.acts + t * BG + (long long)b * G;
                a[j] = i; a[H + j] = f; a[2 * H + j] = g; a[3 * H + j] = o;
                p.cbuf[(t + 1) * BH + (long long)b * H + j] = c;
                p.hbuf[(t + 1) * BH + (long long)b * H + j] = h;
            }
        }
        if (t + 1 < nT) grid_barrier(bar, t + 1);
    }
}

// Backward over the window (t = T-1 .. 0).  Same grid; smem Ws[uu*G + col] = W_h[u0+uu, col]
// (the rows of the block's units: dh_{t}[b,u] gets sum_col dz_{t+1}[b,col] W_h[u,col]).
template <typename T, int KS>
__global__ void __launch_bounds__(THREADS)
lstm_bwd_persist(const BwdPtrs<T>* __restrict__ args, unsigned int* bar, int nT, int B, int H, int JU) {
    DYN_SHARED(smem_raw);
    T* Ws = reinterpret_cast<T*>(smem_raw);          // (JU, G)
    const BwdPtrs<T> p = *args;
    const int G = 4 * H, u0 = blockIdx.x * JU;
    const int nu = min(JU, H - u0);
    for (int e = threadIdx.x; e < JU * G; e += THREADS) {
        const int uu = e / G, col = e % G;
        Ws[e] = uu < nu ? p.W[(long long)(u0 + uu) * G + col] : T(0);
    }
    __syncthreads();
    const int lane = threadIdx.x % KS, grp = threadIdx.x / KS, NGRP = THREADS / KS;
    const int pairs = B * JU;
    const long long BH = (long long)B * H, BG = (long long)B * G;
    for (int t = nT - 1; t >= 0; --t) {
        const bool has_next = t < nT - 1;
        for (int p0 = 0; p0 < pairs; p0 += NGRP) {
            const int pr = p0 + grp, b = pr / JU, uu = pr % JU;
            const bool in = pr < pairs && uu < nu;
            T s0 = T(0), s1 = T(0);
            if (in && has_next) {
                const T* dzrow = p.dzs + (t + 1) * BG + (long long)b * G;   // (G,) dz_{t+1}
                const T* w = Ws + uu * G;
#pragma unroll 4
                for (int col = lane; col < G; col += 2 * KS) {
                    s0 += __ldcg(dzrow + col) * w[col];
                    if (col + KS < G) s1 += __ldcg(dzrow + col + KS) * w[col + KS];
                }
            }
            const T s = group_sum<T, KS>(s0 + s1);
            if (in && lane == 0) {
                const int j = u0 + uu;
                const long long bh = (long long)b * H + j;
                const T* a = p.acts + t * BG + (long long)b * G;
                const T dh = p.dhs[t * BH + bh] + (has_next ? s : p.dhT[bh]);
                T dzi, dzf, dzg, dzo, dc_prev;
                cell_backward(dh, p.dc[bh], a[j], a[H + j], a[2 * H + j], a[3 * H + j],
                              p.cbuf[(t + 1) * BH + bh], p.cbuf[t * BH + bh], dzi, dzf, dzg, dzo, dc_prev);
                T* dz = p.dzs + t * BG + (long long)b * G;
                dz[j] = dzi; dz[H + j] = dzf; dz[2 * H + j] = dzg; dz[3 * H + j] = dzo;
                p.dc[bh] = dc_prev;
            }
        }
        if (t > 0) grid_barrier(bar, nT - t);
    }
}
