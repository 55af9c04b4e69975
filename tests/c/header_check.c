/*
 * header_check.c: include/gacc.h on its own, compiled as C99, C11 and C++17 with
 * -Wall -Wextra -Wpedantic -Werror (make header-check), linked against the library and
 * run. Every function of the header is named here with the exact signature of
 * docs/c-api.md (plus the additions), so a changed signature fails to compile and a missing
 * symbol fails to link; `make header-check` also fails when the header gains a
 * function this file does not name. Every constant and struct field is used too.
 */
#include "gacc.h"

#include <stdio.h>
#include <string.h>

typedef const char *(*fn_status_name)(gacc_status);
typedef const char *(*fn_last_error)(void);
typedef const char *(*fn_version)(void);
typedef uint32_t (*fn_version_number)(void);
typedef uint32_t (*fn_abi_version)(void);
typedef void (*fn_config_init)(gacc_config *);
typedef gacc_status (*fn_config_init_sized)(gacc_config *, size_t);
typedef gacc_status (*fn_create)(const gacc_config *, const gacc_tensor_desc *, size_t, gacc_engine **);
typedef void (*fn_destroy)(gacc_engine *);
typedef gacc_status (*fn_numel)(const gacc_engine *, size_t *);
typedef gacc_status (*fn_n_tensors)(const gacc_engine *, size_t *);
typedef gacc_status (*fn_tensor_span)(const gacc_engine *, size_t, size_t *, size_t *);
typedef gacc_status (*fn_device)(const gacc_engine *, int32_t *);
typedef gacc_status (*fn_microbatch)(gacc_engine *, const void *, uint32_t, size_t, double);
typedef gacc_status (*fn_microbatch_tensors)(gacc_engine *, const gacc_grad *, size_t, double);
typedef gacc_status (*fn_accumulator_ptr)(gacc_engine *, size_t, float **);
typedef gacc_status (*fn_microbatch_inplace)(gacc_engine *, double);
typedef gacc_status (*fn_step)(gacc_engine *, gacc_step_info *);
typedef gacc_status (*fn_zero)(gacc_engine *);
typedef gacc_status (*fn_params_read)(const gacc_engine *, float *, size_t);
typedef gacc_status (*fn_params_write)(gacc_engine *, const float *, size_t);
typedef gacc_status (*fn_params_ptr)(gacc_engine *, size_t, uint32_t, void **);
typedef gacc_status (*fn_loss_scale)(const gacc_engine *, float *);
typedef gacc_status (*fn_set_lr)(gacc_engine *, float);
typedef gacc_status (*fn_get_lr)(const gacc_engine *, float *);
typedef gacc_status (*fn_set_stream)(gacc_engine *, void *);
typedef gacc_status (*fn_loss_scale_ptr)(gacc_engine *, const float **);
typedef gacc_status (*fn_save)(gacc_engine *, const char *);
typedef gacc_status (*fn_load)(gacc_engine *, const char *);
typedef gacc_status (*fn_create_from_checkpoint)(const char *, int32_t, gacc_engine **);
typedef gacc_status (*fn_set_allreduce)(gacc_engine *, gacc_allreduce_fn, void *, int32_t, int32_t);
typedef gacc_status (*fn_comm_stats)(const gacc_engine *, uint64_t *, uint64_t *);
typedef gacc_status (*fn_set_mpi)(gacc_engine *, const void *);
typedef gacc_status (*fn_nccl_unique_id)(gacc_nccl_id *);
typedef gacc_status (*fn_set_nccl)(gacc_engine *, const gacc_nccl_id *, int32_t, int32_t);

int main(void) {
    fn_status_name p_status_name = gacc_status_name;
    fn_last_error p_last_error = gacc_last_error;
    fn_version p_version = gacc_version;
    fn_version_number p_version_number = gacc_version_number;
    fn_abi_version p_abi_version = gacc_abi_version;
    fn_config_init p_config_init = gacc_config_init; /* the function: no parentheses, no macro */
    fn_config_init_sized p_config_init_sized = gacc_config_init_sized;
    fn_create p_create = gacc_create;
    fn_destroy p_destroy = gacc_destroy;
    fn_numel p_numel = gacc_numel;
    fn_n_tensors p_n_tensors = gacc_n_tensors;
    fn_tensor_span p_tensor_span = gacc_tensor_span;
    fn_device p_device = gacc_device;
    fn_microbatch p_microbatch = gacc_microbatch;
    fn_microbatch_tensors p_microbatch_tensors = gacc_microbatch_tensors;
    fn_accumulator_ptr p_accumulator_ptr = gacc_accumulator_ptr;
    fn_microbatch_inplace p_microbatch_inplace = gacc_microbatch_inplace;
    fn_step p_step = gacc_step;
    fn_zero p_zero = gacc_zero;
    fn_params_read p_params_read = gacc_params_read;
    fn_params_write p_params_write = gacc_params_write;
    fn_params_ptr p_params_ptr = gacc_params_ptr;
    fn_loss_scale p_loss_scale = gacc_loss_scale;
    fn_set_lr p_set_lr = gacc_set_lr;
    fn_get_lr p_get_lr = gacc_get_lr;
    fn_set_stream p_set_stream = gacc_set_stream;
    fn_loss_scale_ptr p_loss_scale_ptr = gacc_loss_scale_ptr;
    fn_save p_save = gacc_save;
    fn_load p_load = gacc_load;
    fn_create_from_checkpoint p_create_from_checkpoint = gacc_create_from_checkpoint;
    fn_set_allreduce p_set_allreduce = gacc_set_allreduce;
    fn_comm_stats p_comm_stats = gacc_comm_stats;
    fn_set_mpi p_set_mpi = gacc_set_mpi;
    fn_nccl_unique_id p_nccl_unique_id = gacc_nccl_unique_id;
    fn_set_nccl p_set_nccl = gacc_set_nccl;
    const void *all[] = {
        (const void *)&p_status_name, (const void *)&p_last_error, (const void *)&p_version,
        (const void *)&p_version_number, (const void *)&p_abi_version, (const void *)&p_config_init,
        (const void *)&p_create, (const void *)&p_destroy, (const void *)&p_numel,
        (const void *)&p_n_tensors, (const void *)&p_tensor_span, (const void *)&p_device,
        (const void *)&p_microbatch, (const void *)&p_step, (const void *)&p_zero,
        (const void *)&p_params_read, (const void *)&p_params_write, (const void *)&p_params_ptr,
        (const void *)&p_loss_scale, (const void *)&p_set_lr, (const void *)&p_get_lr,
        (const void *)&p_set_stream, (const void *)&p_loss_scale_ptr, (const void *)&p_save,
        (const void *)&p_load, (const void *)&p_create_from_checkpoint, (const void *)&p_set_allreduce,
        (const void *)&p_comm_stats, (const void *)&p_set_mpi, (const void *)&p_nccl_unique_id,
        (const void *)&p_set_nccl, (const void *)&p_config_init_sized,
        (const void *)&p_microbatch_tensors, (const void *)&p_accumulator_ptr,
        (const void *)&p_microbatch_inplace,
    };

    /* constants of docs/c-api.md, with their values */
    const int consts_ok = GACC_DEVICE_AUTO == -2 && GACC_DEVICE_CPU == -1 && GACC_DTYPE_F32 == 0 &&
                          GACC_DTYPE_F16 == 1 && GACC_DTYPE_BF16 == 2 && GACC_OPTIMIZER_SGD == 0 &&
                          GACC_OPTIMIZER_ADAMW == 1 && GACC_PRECISION_FP32 == 0 && GACC_PRECISION_FP16 == 1 &&
                          GACC_PRECISION_BF16 == 2 && GACC_GRADS_MEAN == 0 && GACC_GRADS_SUM == 1 &&
                          GACC_OK == 0 && GACC_ERR_NULL_POINTER == 1 && GACC_ERR_INVALID_ARGUMENT == 2 &&
                          GACC_ERR_INVALID_HANDLE == 3 && GACC_ERR_INVALID_STATE == 4 &&
                          GACC_ERR_OUT_OF_MEMORY == 5 && GACC_ERR_DEVICE_UNAVAILABLE == 6 &&
                          GACC_ERR_DEVICE == 7 && GACC_ERR_IO == 8 && GACC_ERR_CORRUPT == 9 &&
                          GACC_ERR_COMMUNICATION == 10 && GACC_ERR_INTERNAL == 11 &&
                          GACC_VERSION_NUMBER == GACC_VERSION_MAJOR * 10000 + GACC_VERSION_MINOR * 100 +
                                                     GACC_VERSION_PATCH &&
                          GACC_ABI_VERSION == 2 && GACC_LOSS_SCALE_GRADSCALER == 0 &&
                          GACC_LOSS_SCALE_DEEPSPEED == 1 && sizeof(GACC_VERSION) > 1 && GACC_DTYPE_F64 == 3 &&
                          GACC_CHECKPOINT_FORMAT_VERSION == 1 &&
                          sizeof(gacc_nccl_id) == 128;

    /* every struct field, by its docs/c-api.md name */
    gacc_config cfg;
    gacc_tensor_desc desc;
    gacc_step_info info;
    memset(&cfg, 0, sizeof cfg);
    memset(&desc, 0, sizeof desc);
    memset(&info, 0, sizeof info);
    cfg.struct_size = (uint32_t)sizeof cfg; /* filled by hand: the caller states its size */
    cfg.device = GACC_DEVICE_CPU;
    cfg.optimizer = GACC_OPTIMIZER_SGD;
    cfg.lr = 0.1f;
    cfg.momentum = 0.0f;
    cfg.nesterov = 0u;
    cfg.beta1 = 0.9f;
    cfg.beta2 = 0.999f;
    cfg.eps = 1e-8f;
    cfg.weight_decay = 0.0f;
    cfg.precision = GACC_PRECISION_FP32;
    cfg.max_grad_norm = 0.0f;
    cfg.init_scale = 1.0f;
    cfg.growth_factor = 2.0f;
    cfg.backoff_factor = 0.5f;
    cfg.growth_interval = 1u;
    cfg.grad_reduction = GACC_GRADS_MEAN;
    cfg.hysteresis = 1u;
    cfg.consecutive_hysteresis = 0u;
    cfg.min_loss_scale = 0.0f;
    cfg.max_loss_scale = 0.0f;
    cfg.drop_nonfinite_microbatches = 0u;
    cfg.compensated_accumulation = 0u;
    cfg.stochastic_rounding = 0u;
    cfg.seed = 0u;
    cfg.loss_scale_policy = GACC_LOSS_SCALE_GRADSCALER;
    desc.name = "w";
    desc.numel = 2;
    desc.init = NULL;
    desc.no_weight_decay = 0u;

    /* a minimal run through the library, so the link is exercised at run time */
    gacc_engine *e = NULL;
    const float g[2] = {1.0f, -1.0f};
    int ok = consts_ok && p_create(&cfg, &desc, 1, &e) == GACC_OK && e != NULL &&
             p_microbatch(e, g, GACC_DTYPE_F32, 2, 1.0) == GACC_OK && p_step(e, &info) == GACC_OK &&
             info.applied == 1u && info.step == 1u && info.microbatches == 1u && info.total_weight == 1.0 &&
             info.dropped_microbatches == 0u &&
             info.loss_scale == 1.0f && info.grad_norm > 0.0f && info.clip_coef == 1.0f;
    /* the v0.2 additions: one per-tensor micro-batch, one in place */
    gacc_grad grad;
    float *acc = NULL;
    grad.data = g;
    grad.dtype = GACC_DTYPE_F32;
    grad.numel = 2;
    ok = ok && p_microbatch_tensors(e, &grad, 1, 1.0) == GACC_OK && p_accumulator_ptr(e, 0, &acc) == GACC_OK &&
         acc != NULL && acc[0] == 1.0f && acc[1] == -1.0f;
    if (ok) {
        acc[0] += 1.0f;
        acc[1] -= 1.0f;
    }
    ok = ok && p_microbatch_inplace(e, 1.0) == GACC_OK && p_step(e, &info) == GACC_OK && info.microbatches == 2u &&
         info.total_weight == 2.0 && acc[0] == 0.0f && acc[1] == 0.0f;
    p_destroy(e);
    /* the macro and the sized call agree with the function */
    gacc_config by_macro, by_function, by_sized;
    gacc_config_init(&by_macro);
    p_config_init(&by_function);
    ok = ok && p_config_init_sized(&by_sized, sizeof by_sized) == GACC_OK &&
         by_macro.struct_size == sizeof by_macro && by_function.struct_size == sizeof by_function &&
         by_sized.struct_size == sizeof by_sized && by_macro.lr == by_function.lr && by_sized.lr == by_function.lr &&
         by_macro.growth_interval == 2000u && by_sized.seed == by_function.seed &&
         by_macro.loss_scale_policy == GACC_LOSS_SCALE_GRADSCALER &&
         by_sized.loss_scale_policy == by_function.loss_scale_policy;
    ok = ok && all[0] != NULL && p_version_number() == GACC_VERSION_NUMBER &&
         p_abi_version() == GACC_ABI_VERSION && strcmp(p_version(), GACC_VERSION) == 0 &&
         strcmp(p_status_name(GACC_OK), "GACC_OK") == 0 && p_last_error() != NULL;
    (void)p_numel;
    (void)p_n_tensors;
    (void)p_tensor_span;
    (void)p_device;
    (void)p_zero;
    (void)p_params_read;
    (void)p_params_write;
    (void)p_params_ptr;
    (void)p_loss_scale;
    (void)p_set_lr;
    (void)p_get_lr;
    (void)p_set_stream;
    (void)p_loss_scale_ptr;
#ifdef __cplusplus
    const char *lang = "C++";
#else
    const char *lang = "C";
#endif
    printf("header check (%s, %ld): %s\n", lang,
#ifdef __cplusplus
           (long)__cplusplus,
#else
           (long)__STDC_VERSION__,
#endif
           ok ? "ok" : "FAILED");
    return ok ? 0 : 1;
}
