/* Native Linear Alignment sampler: a bit-exact mirror of la_edge/decoding/sampling.py (choose_rows). */
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

#define LA_ABI_VERSION 5 /* 5: mask_min_p; 4: -inf bans and LA_ERR_NO_TOKEN, only la_choose exported; 3: K rows */
#define LA_MAX_TOP_LOGPROBS 20
#define LA_MAX_BRANCHES 16

#define LA_OK 0
#define LA_ERR_NONFINITE (-1) /* out->bad_row: the branch, or k for the mixed base row */
#define LA_ERR_INVALID (-3)
#define LA_ERR_NO_TOKEN (-4) /* every token banned: out->bad_row is k for an all -inf base row, else -1 */

/* How K rows combine (la_edge/decoding/combination.py): b = sum mix[k] z_k;
   z = b + sum guide[k] s_t (z_k - z_ref) over the nucleus of softmax(b / T_m), less the tokens that a
   guiding row (guide[k] s_t != 0), or z_ref while any row guides, bans with -inf. */
typedef struct {
  int32_t k;                     /* number of rows, 1..LA_MAX_BRANCHES */
  int32_t ref;                   /* the plain branch, or -1 when every guide is 0 */
  int32_t adaptive;              /* 1: s_t = JSD(softmax(b/T_m) || softmax(z_ref/T_m)) in bits, else 1 */
  double mix[LA_MAX_BRANCHES];   /* >= 0, summing to 1; cast to float like np.float32(mix[k]) */
  double guide[LA_MAX_BRANCHES]; /* guide[ref] = 0; float(guide[k] * s_t) multiplies z_k - z_ref */
} la_combination;

typedef struct {
  double temperature;      /* 0 = greedy */
  double mask_top_p;       /* plausibility_top_p */
  double mask_temperature; /* params.mask_temperature (already resolved) */
  double mask_min_p;       /* plausibility_min_p: 0 = off */
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
  double ratio_scale; /* s_t when adaptive, else 1 */
  int32_t bad_row;    /* on LA_ERR_NONFINITE and LA_ERR_NO_TOKEN, else -1 */
} la_result;

typedef struct la_workspace la_workspace; /* opaque scratch buffers, sized for n_vocab */

/* Scratch for rows of up to n_vocab logits; NULL on bad size or out of memory. */
LA_API la_workspace* la_workspace_new(int32_t n_vocab);
LA_API void la_workspace_free(la_workspace* ws);

/* One decision over k rows of n_vocab logits. Returns LA_OK, LA_ERR_NONFINITE (NaN or +inf in a row or
   in the mixed base row; see out->bad_row), LA_ERR_NO_TOKEN (every token banned by -inf) or
   LA_ERR_INVALID. rng_state is advanced exactly like la_edge/decoding/rng.py (and may be NULL when
   greedy; errors leave it untouched). history (generated ids) feeds the penalties. */
LA_API int32_t la_choose(const float* const* rows, int32_t k, const la_combination* combo, int32_t n_vocab,
                         const la_params* p, const int32_t* history, int32_t n_history, uint64_t* rng_state,
                         la_workspace* ws, la_result* out);

/* ABI checks for loaders. */
LA_API int32_t la_abi_version(void);
LA_API int32_t la_sizeof_params(void);
LA_API int32_t la_sizeof_result(void);
LA_API int32_t la_sizeof_combination(void);

#ifdef __cplusplus
}
#endif

#endif
