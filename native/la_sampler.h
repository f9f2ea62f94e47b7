/* Native Linear Alignment sampler: a bit-exact mirror of la_edge/sampling.py (choose_token). */
#ifndef LA_SAMPLER_H
#define LA_SAMPLER_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define LA_API __declspec(dllexport)
#else
#define LA_API __attribute__((visibility("default")))
#endif

#define LA_ABI_VERSION 2 /* 2: penalties apply in greedy decoding too */
#define LA_MAX_TOP_LOGPROBS 20

#define LA_OK 0
#define LA_ERR_NONFINITE_P (-1)
#define LA_ERR_NONFINITE_0 (-2)
#define LA_ERR_INVALID (-3)

typedef struct {
  double ratio;            /* cast to float for the combination, like np.float32(ratio) */
  double temperature;      /* 0 = greedy */
  double mask_top_p;       /* plausibility_top_p */
  double mask_temperature; /* params.mask_temperature (already resolved) */
  int32_t top_k;
  double top_p;
  double min_p;
  double repeat_penalty, frequency_penalty, presence_penalty; /* cast to float like the reference */
  int32_t repeat_last_n;
  int32_t top_logprobs; /* 0..20 */
} la_params;

typedef struct {
  int32_t token;
  double logprob;
  int32_t nucleus_size;
  int32_t n_top;
  int32_t top_ids[LA_MAX_TOP_LOGPROBS];
  double top_logprobs[LA_MAX_TOP_LOGPROBS];
} la_result;

typedef struct la_workspace la_workspace; /* opaque scratch buffers, sized for n_vocab */

/* Scratch for rows of up to n_vocab logits; NULL on bad size or out of memory. */
LA_API la_workspace* la_workspace_new(int32_t n_vocab);
LA_API void la_workspace_free(la_workspace* ws);

/* One decision. Returns LA_OK, LA_ERR_NONFINITE_P / _0 (NaN or +inf in zp / z0) or LA_ERR_INVALID.
   z0 = NULL means plain decoding of zp; rng_state is advanced exactly like la_edge/rng.py (and may be
   NULL when greedy). history (generated ids) feeds the penalties, greedy or not. */
LA_API int32_t la_choose(const float* zp, const float* z0, int32_t n_vocab, const la_params* p,
                         const int32_t* history, int32_t n_history, uint64_t* rng_state,
                         la_workspace* ws, la_result* out);

/* Building blocks exposed for bit-exactness tests: relative_weights and the nucleus total
   (mass_total of relative_weights) of sampling.py. Rows must be free of NaN and +inf. */
LA_API void la_relative_weights(const float* values, int32_t n, double temperature, double* w);
LA_API double la_row_mass(const float* z, int32_t n, double temperature);

/* ABI checks for loaders. */
LA_API int32_t la_abi_version(void);
LA_API int32_t la_sizeof_params(void);
LA_API int32_t la_sizeof_result(void);

#ifdef __cplusplus
}
#endif

#endif
