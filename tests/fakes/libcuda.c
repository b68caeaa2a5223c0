/*
 * A fake libcuda.so.1 for unit tests: the few CUDA driver API entry points the compute probe
 * calls through ctypes (workloads/cuda_probe.py, DriverApi), with the real signatures and
 * CUresult codes, and no GPU. Built by tests/unit/libcuda_fake.py with gcc; no CUDA headers
 * needed, so it builds on any machine with a C compiler.
 *
 * Behaviour comes from the environment, read at cuInit (as the real library reads its own):
 *   FAKE_CUDA_UUIDS       comma-separated devices, each 32 hex digits (16 bytes, zeros allowed)
 *   FAKE_CUDA_INIT_ERROR  a CUresult cuInit returns (100 no device, 999 unknown, 803, 804, ...)
 *   FAKE_CUDA_CTX_ERROR   a CUresult cuDevicePrimaryCtxRetain returns (802 system not ready, ...)
 *   CUDA_VISIBLE_DEVICES  indices or GPU-<uuid> prefixes, as CUDA reads it: the first invalid or
 *                         repeated entry ends the list, an empty value hides every device
 * Built with -DFAKE_NO_UUID_V2 it lacks cuDeviceGetUuid_v2, like drivers older than CUDA 11.4.
 */
#include <ctype.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int CUresult;
typedef int CUdevice;
typedef struct { unsigned char bytes[16]; } CUuuid;

#define MAX_DEV 16
static int initialised = 0;
static int all_count = 0;
static unsigned char all_uuids[MAX_DEV][16];
static int visible[MAX_DEV];
static int visible_count = 0;

static const struct { int code; const char *name; const char *text; } errors[] = {
    {0, "CUDA_SUCCESS", "no error"},
    {1, "CUDA_ERROR_INVALID_VALUE", "invalid argument"},
    {3, "CUDA_ERROR_NOT_INITIALIZED", "initialization error"},
    {100, "CUDA_ERROR_NO_DEVICE", "no CUDA-capable device is detected"},
    {101, "CUDA_ERROR_INVALID_DEVICE", "invalid device ordinal"},
    {802, "CUDA_ERROR_SYSTEM_NOT_READY", "system not yet initialized"},
    {803, "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH", "system has unsupported display driver / cuda driver combination"},
    {804, "CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE", "forward compatibility was attempted on non supported HW"},
    {999, "CUDA_ERROR_UNKNOWN", "unknown error"},
};

static int hexval(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    c = tolower(c);
    return (c >= 'a' && c <= 'f') ? c - 'a' + 10 : -1;
}

static void format_uuid(const unsigned char *u, char *out) {
    sprintf(out, "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
            u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13],
            u[14], u[15]);
}

static int parse_uuids(const char *spec) {
    all_count = 0;
    const char *p = spec;
    while (*p && all_count < MAX_DEV) {
        int n = 0;
        while (n < 32 && hexval(p[0]) >= 0 && hexval(p[1]) >= 0) {
            all_uuids[all_count][n / 2] = (unsigned char)(hexval(p[0]) * 16 + hexval(p[1]));
            n += 2;
            p += 2;
        }
        if (n != 32 || (*p && *p != ',')) return 1; /* CUDA_ERROR_INVALID_VALUE: a bad test setup */
        all_count++;
        if (*p == ',') p++;
    }
    return 0;
}

static int is_visible(int dev) {
    for (int i = 0; i < visible_count; i++)
        if (visible[i] == dev) return 1;
    return 0;
}

static void apply_visible(const char *value) {
    visible_count = 0;
    if (value == NULL) {
        for (int i = 0; i < all_count; i++) visible[visible_count++] = i;
        return;
    }
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", value);
    for (char *entry = strtok(buf, ","); entry != NULL; entry = strtok(NULL, ",")) {
        while (isspace((unsigned char)*entry)) entry++;
        int hit = -1, hits = 0;
        if (isdigit((unsigned char)*entry)) {
            int idx = atoi(entry);
            if (idx < all_count) hit = idx, hits = 1;
        } else if (strncasecmp(entry, "GPU-", 4) == 0) {
            char text[64];
            for (int d = 0; d < all_count; d++) {
                format_uuid(all_uuids[d], text);
                if (strncasecmp(text, entry, strlen(entry)) == 0) hit = d, hits++;
            }
        }
        if (hits != 1 || is_visible(hit)) break;
        visible[visible_count++] = hit;
    }
}

CUresult cuGetErrorName(CUresult code, const char **out) {
    for (size_t i = 0; i < sizeof errors / sizeof errors[0]; i++)
        if (errors[i].code == code) return *out = errors[i].name, 0;
    *out = NULL;
    return 1;
}

CUresult cuGetErrorString(CUresult code, const char **out) {
    for (size_t i = 0; i < sizeof errors / sizeof errors[0]; i++)
        if (errors[i].code == code) return *out = errors[i].text, 0;
    *out = NULL;
    return 1;
}

CUresult cuDriverGetVersion(int *version) {
    if (version == NULL) return 1;
    *version = 13000;
    return 0;
}

CUresult cuInit(unsigned int flags) {
    const char *fail = getenv("FAKE_CUDA_INIT_ERROR");
    initialised = 0; /* every call re-reads the environment: one loaded copy serves many tests */
    if (flags != 0) return 1;
    if (fail != NULL && *fail) return atoi(fail);
    const char *spec = getenv("FAKE_CUDA_UUIDS");
    if (parse_uuids(spec ? spec : "")) return 1;
    apply_visible(getenv("CUDA_VISIBLE_DEVICES"));
    if (visible_count == 0) return 100; /* as the real library: no device is an init error */
    initialised = 1;
    return 0;
}

static CUresult check(CUdevice dev) {
    if (!initialised) return 3;
    return (dev < 0 || dev >= visible_count) ? 101 : 0;
}

CUresult cuDeviceGetCount(int *count) {
    if (!initialised) return 3;
    *count = visible_count;
    return 0;
}

CUresult cuDeviceGet(CUdevice *dev, int ordinal) {
    CUresult rc = check(ordinal);
    if (rc == 0) *dev = ordinal;
    return rc;
}

static CUresult get_uuid(CUuuid *uuid, CUdevice dev) {
    CUresult rc = check(dev);
    if (rc == 0) memcpy(uuid->bytes, all_uuids[visible[dev]], 16);
    return rc;
}

CUresult cuDeviceGetUuid(CUuuid *uuid, CUdevice dev) { return get_uuid(uuid, dev); }
#ifndef FAKE_NO_UUID_V2
CUresult cuDeviceGetUuid_v2(CUuuid *uuid, CUdevice dev) { return get_uuid(uuid, dev); }
#endif

CUresult cuDeviceGetName(char *name, int len, CUdevice dev) {
    CUresult rc = check(dev);
    if (rc == 0) snprintf(name, (size_t)len, "Fake GPU %d", visible[dev]);
    return rc;
}

CUresult cuDeviceTotalMem_v2(size_t *bytes, CUdevice dev) {
    CUresult rc = check(dev);
    if (rc == 0) *bytes = (size_t)81559 << 20;
    return rc;
}

CUresult cuDeviceGetAttribute(int *value, int attrib, CUdevice dev) {
    CUresult rc = check(dev);
    if (rc != 0) return rc;
    if (attrib == 75) return *value = 9, 0; /* CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR */
    if (attrib == 76) return *value = 0, 0; /* ..._MINOR */
    return 1;
}

CUresult cuDeviceGetPCIBusId(char *bus, int len, CUdevice dev) {
    CUresult rc = check(dev);
    if (rc == 0) snprintf(bus, (size_t)len, "0000:%02X:00.0", 0x18 + visible[dev]);
    return rc;
}

CUresult cuDevicePrimaryCtxRetain(void **ctx, CUdevice dev) {
    CUresult rc = check(dev);
    if (rc != 0) return rc;
    const char *fail = getenv("FAKE_CUDA_CTX_ERROR");
    if (fail != NULL && *fail) return atoi(fail);
    *ctx = (void *)(ptrdiff_t)(dev + 1);
    return 0;
}

CUresult cuDevicePrimaryCtxRelease_v2(CUdevice dev) { return check(dev); }
