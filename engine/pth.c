/*
 * pth.c - PyTorch torch.save zip checkpoints (work in progress: reading lands
 * next; until then .pth files are refused with a clear message).
 */
#include "tensorfile_internal.h"

ms_status ms_pth_parse(ms_tensorfile *tf, ms_error *err)
{
    return ms_fail(err, MS_ERR_UNSUPPORTED, "%s: PyTorch .pth reading not implemented yet",
                   tf->path);
}

ms_status ms_pth_write(const char *path, const ms_tensor *tensors, size_t n, ms_error *err)
{
    (void)tensors;
    (void)n;
    return ms_fail(err, MS_ERR_UNSUPPORTED, "%s: .pth writing not implemented yet", path);
}

ms_status ms_pth_write_zip64(const char *path, const ms_tensor *tensors, size_t n,
                             ms_error *err)
{
    return ms_pth_write(path, tensors, n, err);
}
