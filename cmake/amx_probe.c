/* Exit 0 only if this process may use AMX tiles and a tile op runs. */
#include <immintrin.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

int main(void) {
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("amx-tile") || !__builtin_cpu_supports("amx-int8")) return 2;
    if (syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) != 0) return 3;
    unsigned char cfg[64];
    memset(cfg, 0, sizeof cfg);
    cfg[0] = 1;                       /* palette 1 */
    for (int t = 0; t < 3; t++) {     /* tiles 0..2: 16 rows x 64 bytes */
        cfg[16 + 2 * t] = 64;
        cfg[48 + t] = 16;
    }
    static int8_t a[16 * 64], b[16 * 64];
    static int32_t c[16 * 16];
    for (int i = 0; i < 16 * 64; i++) { a[i] = 1; b[i] = 1; }
    _tile_loadconfig(cfg);
    _tile_zero(0);
    _tile_loadd(1, a, 64);
    _tile_loadd(2, b, 64);
    _tile_dpbssd(0, 1, 2);
    _tile_stored(0, c, 64);
    _tile_release();
    return c[0] == 64 ? 0 : 4;
}
