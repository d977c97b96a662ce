// Kernels of the cell variants behind the CuPy backend: peephole, coupled (CIFG) and GRU.
// Per cell: the gate equations of one training step, forward and backward (the recurrent
// product h_{t-1} W_h, or dz_{t+1} W_h^T, comes from cuBLAS before each launch, as the LSTM's
// cuBLAS step path), and one generation step of one layer with the product inside.
//
// Loaded by lstm_engine/backends/cupy_kernels.py through cupy.RawModule (name_expressions listed
// there); `nvcc --ptx` compiles the very same text in the tests.  No #include (NVRTC), so the
// scalar helpers of lstm.cu are repeated here.
//
// Dimension legend (every shape comment below uses it):
//   B  batch rows (streams, or sequences being sampled: S)     H  hidden size
//   I  input size of the layer (E for layer 0, H above)         V  vocabulary size
//   G  gate columns of W: 4H (peephole: blocks i | f | g | o), 3H (coupled: f | g | o;
//      gru: r | z | n)
//   A  cached values per step: 4H (peephole: i,f,g,o), 3H (coupled: f,g,o), 4H (gru: r,z,n,hn)
// All arrays are row-major.  W (H+I, G) acts on [h_{t-1}, x_t]: rows 0..H-1 = W_h, rows H.. = W_x.
// Training steps: one thread per (batch row b, hidden unit j), grid ceil(B*H/256) blocks of 256;
// generation steps: see their section.
//
// Forward equations per (b, j), z = x_t W_x + b + h_{t-1} W_h (gru: xz = x_t W_x + bx,
// hz = h_{t-1} W_h + bh kept apart):
//   peephole: i = s(z_i + w_ci c_{t-1})  f = s(z_f + w_cf c_{t-1})  g = tanh(z_g)
//             c_t = f c_{t-1} + i g      o = s(z_o + w_co c_t)      h_t = o tanh(c_t)
//   coupled:  f = s(z_f)  g = tanh(z_g)  o = s(z_o)  c_t = f c_{t-1} + (1 - f) g  h_t = o tanh(c_t)
//   gru:      r = s(xz_r + hz_r)  z = s(xz_z + hz_z)  n = tanh(xz_n + r hz_n)
//             h_t = (1 - z) n + z h_{t-1}        (c is carried unchanged)
// Each backward below mirrors its forward in reverse, one derivative step per line.

#define THREADS 256

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
// The cells: forward and backward of one (batch row, hidden unit)
// ---------------------------------------------------------------------------------------
template <typename T>
__device__ __forceinline__ void peephole_forward(T zi, T zf, T zg, T zo, T wci, T wcf, T wco, T c_prev,
                                                 T& i, T& f, T& g, T& o, T& c, T& h) {
    i = sigmoid_(zi + wci * c_prev);     // the input gate sees c_{t-1}
    f = sigmoid_(zf + wcf * c_prev);     // the forget gate sees c_{t-1}
    g = tanh_(zg);
    c = f * c_prev + i * g;              // c_t = f c_{t-1} + i g
    o = sigmoid_(zo + wco * c);          // the output gate sees the new c_t
    h = o * tanh_(c);                    // h_t = o tanh(c_t)
}

template <typename T>
__device__ __forceinline__ void peephole_backward(T dh, T dc_next, T i, T f, T g, T o, T c, T c_prev,
                                                  T wci, T wcf, T wco,
                                                  T& dzi, T& dzf, T& dzg, T& dzo, T& dc_prev) {
    const T tc = tanh_(c);
    const T d_o = dh * tc;                                       // h = o tanh(c)
    dzo = d_o * o * (T(1) - o);                                  // o = s(z_o + w_co c): s(1-s)
    const T dc = dc_next + dh * o * (T(1) - tc * tc) + dzo * wco; // c reaches h through tanh and o's peephole
    const T di = dc * g;                                         // c = f c_prev + i g
    const T dg = dc * i;
    const T df = dc * c_prev;
    dzi = di * i * (T(1) - i);                                   // i = s(z_i + w_ci c_prev)
    dzf = df * f * (T(1) - f);                                   // f = s(z_f + w_cf c_prev)
    dzg = dg * (T(1) - g * g);                                   // g = tanh(z_g)
    dc_prev = dc * f + dzi * wci + dzf * wcf;                    // c_prev reaches c and both peepholes
}

template <typename T>
__device__ __forceinline__ void coupled_forward(T zf, T zg, T zo, T c_prev, T& f, T& g, T& o, T& c, T& h) {
    f = sigmoid_(zf);
    g = tanh_(zg);
    o = sigmoid_(zo);
    c = f * c_prev + (T(1) - f) * g;     // the input gate is 1 - f
    h = o * tanh_(c);                    // h_t = o tanh(c_t)
}

template <typename T>
__device__ __forceinline__ void coupled_backward(T dh, T dc_next, T f, T g, T o, T c, T c_prev,
                                                 T& dzf, T& dzg, T& dzo, T& dc_prev) {
    const T tc = tanh_(c);
    const T d_o = dh * tc;                                 // h = o tanh(c)
    const T dc = dc_next + dh * o * (T(1) - tc * tc);      // through tanh: 1 - tanh(c)^2
    const T df = dc * (c_prev - g);                        // c = f c_prev + (1 - f) g
    const T dg = dc * (T(1) - f);
    dc_prev = dc * f;
    dzf = df * f * (T(1) - f);                             // through sigmoid: s(1-s)
    dzg = dg * (T(1) - g * g);                             // through tanh: 1 - g^2
    dzo = d_o * o * (T(1) - o);
}

// xr, xz, xn: x_t W_x + bx;  hr, hz, hn: h_{t-1} W_h + bh (hn is kept: the backward needs it)
template <typename T>
__device__ __forceinline__ void gru_forward(T xr, T xz, T xn, T hr, T hz, T hn, T h_prev,
                                            T& r, T& z, T& n, T& h) {
    r = sigmoid_(xr + hr);
    z = sigmoid_(xz + hz);
    n = tanh_(xn + r * hn);              // the reset gate scales the recurrent part only
    h = (T(1) - z) * n + z * h_prev;     // h_t = (1 - z) n + z h_{t-1}
}

// -> dxr, dxz, dxn (dL/d of x W_x + bx), dhn (dL/d of h W_h + bh in block n; blocks r, z equal
// dxr, dxz), dh_direct = dL/dh_{t-1} through z h_{t-1} (the product's part is added by the host)
template <typename T>
__device__ __forceinline__ void gru_backward(T dh, T r, T z, T n, T hn, T h_prev,
                                             T& dxr, T& dxz, T& dxn, T& dhn, T& dh_direct) {
    const T dn = dh * (T(1) - z);        // h = (1 - z) n + z h_prev
    const T dz = dh * (h_prev - n);
    dh_direct = dh * z;
    dxn = dn * (T(1) - n * n);           // n = tanh(xn + r hn): 1 - n^2
    dhn = dxn * r;
    const T dr = dxn * hn;
    dxr = dr * r * (T(1) - r);           // r = s(xr + hr): s(1-s)
    dxz = dz * z * (T(1) - z);           // z = s(xz + hz)
}

// ---------------------------------------------------------------------------------------
// Training, one time step (the host runs cuBLAS for the recurrent product before each launch)
// ---------------------------------------------------------------------------------------
template <typename T>
__global__ void peephole_fwd_cell(const T* __restrict__ xproj_t,   // (B,G) x_t W_x
                                  const T* __restrict__ bias,      // (G,)
                                  const T* __restrict__ zrec,      // (B,G) h_{t-1} W_h
                                  const T* __restrict__ wc,        // (3,H) w_ci, w_cf, w_co
                                  const T* __restrict__ c_prev,    // (B,H)
                                  T* __restrict__ acts_t,          // (B,A) out: i, f, g, o
                                  T* __restrict__ c_out,           // (B,H) out
                                  T* __restrict__ h_out,           // (B,H) out
                                  int B, int H) {
    const long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= (long long)B * H) return;
    const int b = (int)(e / H), j = (int)(e % H), G = 4 * H;
    const T* xp = xproj_t + (long long)b * G;
    const T* zr = zrec + (long long)b * G;
    T i, f, g, o, c, h;
    peephole_forward((xp[j] + bias[j]) + zr[j], (xp[H + j] + bias[H + j]) + zr[H + j],
                     (xp[2 * H + j] + bias[2 * H + j]) + zr[2 * H + j],
                     (xp[3 * H + j] + bias[3 * H + j]) + zr[3 * H + j],
                     wc[j], wc[H + j], wc[2 * H + j], c_prev[e], i, f, g, o, c, h);
    T* a = acts_t + (long long)b * G;
    a[j] = i; a[H + j] = f; a[2 * H + j] = g; a[3 * H + j] = o;
    c_out[e] = c;
    h_out[e] = h;
}

template <typename T>
__global__ void peephole_bwd_cell(const T* __restrict__ dhs_t,     // (B,H) from the layer above
                                  const T* __restrict__ dh_next,   // (B,H) dz_{t+1} W_h^T, or dhT
                                  const T* __restrict__ acts_t,    // (B,A)
                                  const T* __restrict__ c_t,       // (B,H)
                                  const T* __restrict__ c_prev,    // (B,H)
                                  const T* __restrict__ wc,        // (3,H)
                                  T* __restrict__ dc,              // (B,H) in: dc_t, out: dc_{t-1}
                                  T* __restrict__ dz_t,            // (B,G) out
                                  int B, int H) {
    const long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= (long long)B * H) return;
    const int b = (int)(e / H), j = (int)(e % H), G = 4 * H;
    const T* a = acts_t + (long long)b * G;
    T dzi, dzf, dzg, dzo, dc_prev;
    peephole_backward(dhs_t[e] + dh_next[e], dc[e], a[j], a[H + j], a[2 * H + j], a[3 * H + j], c_t[e],
                      c_prev[e], wc[j], wc[H + j], wc[2 * H + j], dzi, dzf, dzg, dzo, dc_prev);
    T* dz = dz_t + (long long)b * G;
    dz[j] = dzi; dz[H + j] = dzf; dz[2 * H + j] = dzg; dz[3 * H + j] = dzo;
    dc[e] = dc_prev;
}

template <typename T>
__global__ void coupled_fwd_cell(const T* __restrict__ xproj_t,   // (B,G) x_t W_x
                                 const T* __restrict__ bias,      // (G,)
                                 const T* __restrict__ zrec,      // (B,G) h_{t-1} W_h
                                 const T* __restrict__ c_prev,    // (B,H)
                                 T* __restrict__ acts_t,          // (B,A) out: f, g, o
                                 T* __restrict__ c_out,           // (B,H) out
                                 T* __restrict__ h_out,           // (B,H) out
                                 int B, int H) {
    const long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= (long long)B * H) return;
    const int b = (int)(e / H), j = (int)(e % H), G = 3 * H;
    const T* xp = xproj_t + (long long)b * G;
    const T* zr = zrec + (long long)b * G;
    T f, g, o, c, h;
    coupled_forward((xp[j] + bias[j]) + zr[j], (xp[H + j] + bias[H + j]) + zr[H + j],
                    (xp[2 * H + j] + bias[2 * H + j]) + zr[2 * H + j], c_prev[e], f, g, o, c, h);
    T* a = acts_t + (long long)b * G;
    a[j] = f; a[H + j] = g; a[2 * H + j] = o;
    c_out[e] = c;
    h_out[e] = h;
}

template <typename T>
__global__ void coupled_bwd_cell(const T* __restrict__ dhs_t,     // (B,H) from the layer above
                                 const T* __restrict__ dh_next,   // (B,H) dz_{t+1} W_h^T, or dhT
                                 const T* __restrict__ acts_t,    // (B,A)
                                 const T* __restrict__ c_t,       // (B,H)
                                 const T* __restrict__ c_prev,    // (B,H)
                                 T* __restrict__ dc,              // (B,H) in: dc_t, out: dc_{t-1}
                                 T* __restrict__ dz_t,            // (B,G) out
                                 int B, int H) {
    const long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= (long long)B * H) return;
    const int b = (int)(e / H), j = (int)(e % H), G = 3 * H;
    const T* a = acts_t + (long long)b * G;
    T dzf, dzg, dzo, dc_prev;
    coupled_backward(dhs_t[e] + dh_next[e], dc[e], a[j], a[H + j], a[2 * H + j], c_t[e], c_prev[e],
                     dzf, dzg, dzo, dc_prev);
    T* dz = dz_t + (long long)b * G;
    dz[j] = dzf; dz[H + j] = dzg; dz[2 * H + j] = dzo;
    dc[e] = dc_prev;
}

template <typename T>
__global__ void gru_fwd_cell(const T* __restrict__ xproj_t,   // (B,G) x_t W_x
                             const T* __restrict__ bx,        // (G,)
                             const T* __restrict__ zrec,      // (B,G) h_{t-1} W_h
                             const T* __restrict__ bh,        // (G,)
                             const T* __restrict__ h_prev,    // (B,H)
                             T* __restrict__ acts_t,          // (B,A) out: r, z, n, hn
                             T* __restrict__ h_out,           // (B,H) out
                             int B, int H) {
    const long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= (long long)B * H) return;
    const int b = (int)(e / H), j = (int)(e % H), G = 3 * H;
    const T* xp = xproj_t + (long long)b * G;
    const T* zr = zrec + (long long)b * G;
    const T hn = zr[2 * H + j] + bh[2 * H + j];
    T r, z, n, h;
    gru_forward(xp[j] + bx[j], xp[H + j] + bx[H + j], xp[2 * H + j] + bx[2 * H + j],
                zr[j] + bh[j], zr[H + j] + bh[H + j], hn, h_prev[e], r, z, n, h);
    T* a = acts_t + (long long)b * 4 * H;
    a[j] = r; a[H + j] = z; a[2 * H + j] = n; a[3 * H + j] = hn;
    h_out[e] = h;
}

// dh_t = dhs_t + carry (+ dhp_{t+1} W_h^T when has_next); carry: in dh_{t+1} z_{t+1} (dhT at the
// last step), out dh_t z_t.  dxp_t / dhp_t: dL/d of x_t W_x + bx and of h_{t-1} W_h + bh.
template <typename T>
__global__ void gru_bwd_cell(const T* __restrict__ dhs_t,     // (B,H) from the layer above
                             const T* __restrict__ dh_rec,    // (B,H) dhp_{t+1} W_h^T
                             const T* __restrict__ acts_t,    // (B,A)
                             const T* __restrict__ h_prev,    // (B,H)
                             T* __restrict__ carry,           // (B,H) in/out, see above
                             T* __restrict__ dxp_t,           // (B,G) out
                             T* __restrict__ dhp_t,           // (B,G) out
                             int B, int H, int has_next) {
    const long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= (long long)B * H) return;
    const int b = (int)(e / H), j = (int)(e % H), G = 3 * H;
    const T* a = acts_t + (long long)b * 4 * H;
    const T dh = dhs_t[e] + carry[e] + (has_next ? dh_rec[e] : T(0));
    T dxr, dxz, dxn, dhn, dh_direct;
    gru_backward(dh, a[j], a[H + j], a[2 * H + j], a[3 * H + j], h_prev[e], dxr, dxz, dxn, dhn, dh_direct);
    T* dx = dxp_t + (long long)b * G;
    T* dhp = dhp_t + (long long)b * G;
    dx[j] = dxr; dx[H + j] = dxz; dx[2 * H + j] = dxn;
    dhp[j] = dxr; dhp[H + j] = dxz; dhp[2 * H + j] = dhn;
    carry[e] = dh_direct;
}

// ---------------------------------------------------------------------------------------
// Generation: one step of one layer for S sequences (B = S), the product inside, the input read
// in place: x_t = Emb[token] (layer 0, x_rows = the tokens) or the new h of the layer below.
// Pointers are plain arguments (a generation graph is keyed by them on the host).
// grid (ceil(H/GEN_UNITS), S), THREADS threads: block (u, s) computes units u*GEN_UNITS.. of sequence s.
// ---------------------------------------------------------------------------------------

#define GEN_UNITS 32                        // units per block: one warp's lanes
#define GEN_KSPLIT (THREADS / GEN_UNITS)    // the reduction is split over the block's warps

// zh[g] = sum_k h_prev[s,k] W[k, g*H+j];  zx[g] = sum_k x[row,k] W[H+k, g*H+j], NG gate blocks, for the
// block's GEN_UNITS units j.  Warp w sums k = w, w + GEN_KSPLIT, ... (its lanes read consecutive
// columns of a row of W: coalesced); the partial sums are added in warp order through shared memory.
// Every thread must call it (a barrier inside); the sums are valid in warp 0 only.
template <typename T, int NG>
__device__ __forceinline__ void gen_product(const T* __restrict__ W, const T* __restrict__ h_prev,
                                            const T* __restrict__ x, const int* __restrict__ x_rows, int I,
                                            int s, int j, int H, T (&zh)[NG], T (&zx)[NG]) {
    __shared__ T part[GEN_KSPLIT][2 * NG][GEN_UNITS];
    const int lane = threadIdx.x % GEN_UNITS, ks = threadIdx.x / GEN_UNITS, G = NG * H;
    const T* hrow = h_prev + (long long)s * H;
    const T* xrow = x + (long long)(x_rows ? x_rows[s] : s) * I;
#pragma unroll
    for (int g = 0; g < NG; ++g) { zh[g] = T(0); zx[g] = T(0); }
    if (j < H) {
        for (int k = ks; k < H; k += GEN_KSPLIT) {
            const T v = hrow[k];
            const T* w = W + (long long)k * G + j;
#pragma unroll
            for (int g = 0; g < NG; ++g) zh[g] += v * w[g * H];
        }
        for (int k = ks; k < I; k += GEN_KSPLIT) {
            const T v = xrow[k];
            const T* w = W + (long long)(H + k) * G + j;
#pragma unroll
            for (int g = 0; g < NG; ++g) zx[g] += v * w[g * H];
        }
    }
#pragma unroll
    for (int g = 0; g < NG; ++g) { part[ks][g][lane] = zh[g]; part[ks][NG + g][lane] = zx[g]; }
    __syncthreads();
    if (ks == 0) {
        for (int q = 1; q < GEN_KSPLIT; ++q)
#pragma unroll
            for (int g = 0; g < NG; ++g) { zh[g] += part[q][g][lane]; zx[g] += part[q][NG + g][lane]; }
    }
}

template <typename T>
__global__ void gen_peephole_step(const T* __restrict__ W,        // (H+I,G)
                                  const T* __restrict__ bias,     // (G,)
                                  const T* __restrict__ wc,       // (3,H)
                                  const T* __restrict__ h_prev,   // (S,H)
                                  const T* __restrict__ c_prev,   // (S,H)
                                  const T* __restrict__ x,        // (S,I), or Emb (V,I) with x_rows
                                  const int* __restrict__ x_rows, // (S,) token ids, or null
                                  int I,
                                  T* __restrict__ h_out,          // (S,H)
                                  T* __restrict__ c_out,          // (S,H)
                                  int S, int H) {
    const int s = blockIdx.y, j = blockIdx.x * GEN_UNITS + threadIdx.x % GEN_UNITS;
    T zh[4], zx[4];
    gen_product<T, 4>(W, h_prev, x, x_rows, I, s, j, H, zh, zx);
    if (threadIdx.x >= GEN_UNITS || j >= H) return;
    const long long e = (long long)s * H + j;
    T i, f, g, o, c, h;
    peephole_forward((zx[0] + bias[j]) + zh[0], (zx[1] + bias[H + j]) + zh[1], (zx[2] + bias[2 * H + j]) + zh[2],
                     (zx[3] + bias[3 * H + j]) + zh[3], wc[j], wc[H + j], wc[2 * H + j], c_prev[e],
                     i, f, g, o, c, h);
    c_out[e] = c;
    h_out[e] = h;
}

template <typename T>
__global__ void gen_coupled_step(const T* __restrict__ W,        // (H+I,G)
                                 const T* __restrict__ bias,     // (G,)
                                 const T* __restrict__ h_prev,   // (S,H)
                                 const T* __restrict__ c_prev,   // (S,H)
                                 const T* __restrict__ x,        // (S,I), or Emb (V,I) with x_rows
                                 const int* __restrict__ x_rows, // (S,) token ids, or null
                                 int I,
                                 T* __restrict__ h_out,          // (S,H)
                                 T* __restrict__ c_out,          // (S,H)
                                 int S, int H) {
    const int s = blockIdx.y, j = blockIdx.x * GEN_UNITS + threadIdx.x % GEN_UNITS;
    T zh[3], zx[3];
    gen_product<T, 3>(W, h_prev, x, x_rows, I, s, j, H, zh, zx);
    if (threadIdx.x >= GEN_UNITS || j >= H) return;
    const long long e = (long long)s * H + j;
    T f, g, o, c, h;
    coupled_forward((zx[0] + bias[j]) + zh[0], (zx[1] + bias[H + j]) + zh[1], (zx[2] + bias[2 * H + j]) + zh[2],
                    c_prev[e], f, g, o, c, h);
    c_out[e] = c;
    h_out[e] = h;
}

// c is carried unchanged (the state stays the pair [h, c] for every cell)
template <typename T>
__global__ void gen_gru_step(const T* __restrict__ W,        // (H+I,G)
                             const T* __restrict__ bx,       // (G,)
                             const T* __restrict__ bh,       // (G,)
                             const T* __restrict__ h_prev,   // (S,H)
                             const T* __restrict__ c_prev,   // (S,H)
                             const T* __restrict__ x,        // (S,I), or Emb (V,I) with x_rows
                             const int* __restrict__ x_rows, // (S,) token ids, or null
                             int I,
                             T* __restrict__ h_out,          // (S,H)
                             T* __restrict__ c_out,          // (S,H)
                             int S, int H) {
    const int s = blockIdx.y, j = blockIdx.x * GEN_UNITS + threadIdx.x % GEN_UNITS;
    T zh[3], zx[3];
    gen_product<T, 3>(W, h_prev, x, x_rows, I, s, j, H, zh, zx);
    if (threadIdx.x >= GEN_UNITS || j >= H) return;
    const long long e = (long long)s * H + j;
    T r, z, n, h;
    gru_forward(zx[0] + bx[j], zx[1] + bx[H + j], zx[2] + bx[2 * H + j],
                zh[0] + bh[j], zh[1] + bh[H + j], zh[2] + bh[2 * H + j], h_prev[e], r, z, n, h);
    c_out[e] = c_prev[e];
    h_out[e] = h;
}
