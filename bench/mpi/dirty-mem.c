/*
 * dirty-mem.c - a guest workload that dirties memory at a set rate and proves,
 * at the end, that its memory survived (a migration, a checkpoint/restore).
 * No MPI calls: it is built by mpicc with the other programs of bench/mpi/
 * only so that it lands in the guest image at /opt/symbio/build/mpi/.
 *
 * Usage:
 *   dirty-mem --mib N --rate MiBps|max --seconds S [--report-ms 200]
 *             [--heartbeat PATH] [--heartbeat-ms 10]
 *
 * Allocates N MiB and writes every page with a pattern derived from the page
 * index and a per-page generation (0 at first). Then it loops for S seconds
 * (S may be 0: fill, verify, exit), waking every millisecond: each iteration
 * rewrites as many pages as the rate allows by now (paced on CLOCK_MONOTONIC;
 * rate 0: idle after the fill; "max": a 64 KiB chunk per iteration, no
 * sleeping), bumping each page's generation. Output, one line each,
 * unbuffered on stdout:
 *
 *   dirty-mem start pages=<n> page_bytes=<b> fill_ms=<ms> rate_mibps=<r>
 *   t=<ms> iter=<k> dirtied_mib=<x> max_gap_ms=<g>     every --report-ms
 *   mark n=<m> t=<ms> iter=<k> dirtied_mib=<x> max_gap_ms=<g>   on SIGUSR1
 *   dirty-mem ok pages=<n> max_gap_ms=<overall>         exit 0
 *   dirty-mem CORRUPT page=<i> ...                      exit 1
 *
 * t is ms since the fill ended, dirtied_mib is cumulative, and max_gap_ms is
 * the largest interval between the starts of consecutive loop iterations
 * seen since the previous report line (a `mark` line: since the previous
 * mark). The loop normally turns every ~1 ms, so a larger gap is time the
 * program could not run: a migration's stall as this guest sees it. Note
 * that it is measured on the guest's own clock: a guest clock that stops
 * while the VM is stopped (TCG, and kvmclock) does not show that stop.
 * --heartbeat PATH (e.g. /dev/ttyS0, the serial console) gets a '.' from
 * the loop at most every --heartbeat-ms, and a copy of every line above:
 * the host, timing what arrives on its own clock, sees the whole stall, and
 * can tell which report lines fell into which migration.
 *
 * SIGTERM/SIGINT end the loop early; the memory is still verified.
 * Exit: 0 ok, 1 corrupt memory, 2 usage or setup error.
 */
#define _POSIX_C_SOURCE 200809L /* clock_gettime, nanosleep, sigaction */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define PAGE_BYTES 4096u
#define WORDS_PER_PAGE (PAGE_BYTES / sizeof(uint64_t))
#define TICK_NS 1000000L      /* one loop iteration per millisecond when paced */
#define MAX_CHUNK_PAGES 16u   /* --rate max: 64 KiB per iteration */
#define MAX_BACKLOG_MS 100.0  /* pacing forgives a stall beyond this (no burst after it) */

static volatile sig_atomic_t g_stop = 0;
static volatile sig_atomic_t g_mark = 0;

static void on_stop(int sig)
{
    (void)sig;
    g_stop = 1;
}

static void on_mark(int sig)
{
    (void)sig;
    g_mark = 1;
}

static int g_hb_fd = -1;

/* never let a full console stall the loop: a beat or line that does not fit is dropped */
static void hb_write(const char *buf, size_t len)
{
    if (g_hb_fd < 0) return;
    if (write(g_hb_fd, buf, len) < 0 && errno != EAGAIN && errno != EINTR) {
        fprintf(stderr, "dirty-mem: heartbeat write failed: %s; no more heartbeats\n", strerror(errno));
        close(g_hb_fd);
        g_hb_fd = -1;
    }
}

/* one output line, to stdout and (own line) to the heartbeat */
#if defined(__GNUC__)
__attribute__((format(printf, 1, 2)))
#endif
static void emit(const char *fmt, ...)
{
    char line[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line + 1, sizeof line - 2, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    size_t len = (size_t)n < sizeof line - 3 ? (size_t)n : sizeof line - 3;
    line[0] = '\n';
    line[len + 1] = '\n';
    fwrite(line + 1, 1, len + 1, stdout);
    hb_write(line, len + 2);
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* splitmix64's finalizer: a different-looking 64-bit value per (page, generation) */
static uint64_t mix(uint64_t x)
{
    x ^= x >> 30;
    x *= UINT64_C(0xbf58476d1ce4e5b9);
    x ^= x >> 27;
    x *= UINT64_C(0x94d049bb133111eb);
    x ^= x >> 31;
    return x;
}

static uint64_t page_seed(size_t page, uint32_t gen)
{
    return mix(((uint64_t)page << 32) ^ (uint64_t)gen ^ UINT64_C(0x9e3779b97f4a7c15));
}

static void fill_page(uint64_t *p, size_t page, uint32_t gen)
{
    const uint64_t seed = page_seed(page, gen);
    for (size_t i = 0; i < WORDS_PER_PAGE; i++) p[i] = seed + i;
}

/* index of the first wrong word, or -1 */
static long check_page(const uint64_t *p, size_t page, uint32_t gen)
{
    const uint64_t seed = page_seed(page, gen);
    for (size_t i = 0; i < WORDS_PER_PAGE; i++)
        if (p[i] != seed + i) return (long)i;
    return -1;
}

static void usage(const char *why)
{
    fprintf(stderr,
            "dirty-mem: %s\n"
            "usage: dirty-mem --mib N --rate MiBps|max --seconds S [--report-ms 200]\n"
            "                 [--heartbeat PATH] [--heartbeat-ms 10]\n",
            why);
    exit(2);
}

static double parse_number(const char *opt, const char *s, double min, double max)
{
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (errno != 0 || end == s || *end != '\0' || !(v >= min && v <= max)) {
        char why[160];
        snprintf(why, sizeof why, "%s wants a number in [%g, %g], got '%s'", opt, min, max, s);
        usage(why);
    }
    return v;
}

int main(int argc, char **argv)
{
    double mib = -1, rate = -1, seconds = -1, report_ms = 200, heartbeat_ms = 10;
    int rate_max = 0;
    const char *heartbeat = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (i + 1 >= argc) usage("every option takes a value");
        const char *v = argv[++i];
        if (strcmp(a, "--mib") == 0) mib = parse_number(a, v, 1, 1 << 20);
        else if (strcmp(a, "--rate") == 0) {
            if (strcmp(v, "max") == 0) {
                rate_max = 1;
                rate = 0;
            } else {
                rate = parse_number(a, v, 0, 1e6);
            }
        } else if (strcmp(a, "--seconds") == 0) seconds = parse_number(a, v, 0, 1e7);
        else if (strcmp(a, "--report-ms") == 0) report_ms = parse_number(a, v, 1, 1e7);
        else if (strcmp(a, "--heartbeat") == 0) heartbeat = v;
        else if (strcmp(a, "--heartbeat-ms") == 0) heartbeat_ms = parse_number(a, v, 1, 1e7);
        else {
            char why[160];
            snprintf(why, sizeof why, "unknown option '%s'", a);
            usage(why);
        }
    }
    if (mib < 0 || rate < 0 || seconds < 0) usage("--mib, --rate and --seconds are required");

    /* line-buffered is not enough when stdout is a file that is read while we run */
    setvbuf(stdout, NULL, _IONBF, 0);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = on_stop;
    if (sigaction(SIGTERM, &sa, NULL) != 0 || sigaction(SIGINT, &sa, NULL) != 0) {
        perror("dirty-mem: sigaction");
        return 2;
    }
    sa.sa_handler = on_mark;
    sa.sa_flags = SA_RESTART;
    if (sigaction(SIGUSR1, &sa, NULL) != 0) {
        perror("dirty-mem: sigaction");
        return 2;
    }

    if (heartbeat) {
        g_hb_fd = open(heartbeat, O_WRONLY | O_NOCTTY | O_NONBLOCK | O_APPEND);
        if (g_hb_fd < 0) {
            fprintf(stderr, "dirty-mem: cannot open heartbeat %s: %s\n", heartbeat, strerror(errno));
            return 2;
        }
    }

    const size_t pages = (size_t)(mib * (1024.0 * 1024.0 / PAGE_BYTES));
    if (pages == 0) usage("--mib is less than one page");
    uint64_t *mem = aligned_alloc(PAGE_BYTES, pages * PAGE_BYTES);
    uint32_t *gen = calloc(pages, sizeof *gen);
    if (!mem || !gen) {
        fprintf(stderr, "dirty-mem: cannot allocate %zu pages (%.0f MiB)\n", pages, mib);
        free(mem);
        free(gen);
        return 2;
    }

    const double fill0 = now_ms();
    for (size_t p = 0; p < pages; p++) fill_page(mem + p * WORDS_PER_PAGE, p, 0);
    const double t0 = now_ms();
    emit("dirty-mem start pages=%zu page_bytes=%u fill_ms=%.1f rate_mibps=%s%.1f", pages, PAGE_BYTES, t0 - fill0,
         rate_max ? "max:" : "", rate);

    const double pages_per_ms = rate * (1024.0 * 1024.0 / PAGE_BYTES) / 1e3;
    const double end = t0 + seconds * 1e3;
    double next_report = t0 + report_ms, last_hb = -1e300, prev = t0;
    double gap_report = 0, gap_mark = 0, gap_all = 0;
    double owed = 0; /* pages the pacing allows but not yet written */
    uint64_t iter = 0, dirtied = 0, marks = 0;
    size_t cursor = 0;
    const struct timespec tick = {0, TICK_NS};

    while (!g_stop) {
        const double now = now_ms();
        const double gap = now - prev;
        prev = now;
        iter++;
        if (gap > gap_report) gap_report = gap;
        if (gap > gap_mark) gap_mark = gap;
        if (gap > gap_all) gap_all = gap;

        size_t todo;
        if (rate_max) {
            todo = MAX_CHUNK_PAGES;
        } else {
            owed += gap * pages_per_ms;
            /* after a long stall, write at most MAX_BACKLOG_MS worth at once */
            if (owed > MAX_BACKLOG_MS * pages_per_ms) owed = MAX_BACKLOG_MS * pages_per_ms;
            todo = (size_t)owed;
            owed -= (double)todo;
        }
        for (size_t k = 0; k < todo; k++) {
            gen[cursor]++;
            fill_page(mem + cursor * WORDS_PER_PAGE, cursor, gen[cursor]);
            if (++cursor == pages) cursor = 0;
        }
        dirtied += todo;

        if (now - last_hb >= heartbeat_ms) {
            last_hb = now;
            hb_write(".", 1);
        }
        const double dirtied_mib = (double)dirtied * PAGE_BYTES / (1024.0 * 1024.0);
        if (g_mark) {
            g_mark = 0;
            emit("mark n=%" PRIu64 " t=%.1f iter=%" PRIu64 " dirtied_mib=%.1f max_gap_ms=%.1f", ++marks, now - t0, iter,
                 dirtied_mib, gap_mark);
            gap_mark = 0;
        }
        if (now >= next_report) {
            emit("t=%.0f iter=%" PRIu64 " dirtied_mib=%.1f max_gap_ms=%.1f", now - t0, iter, dirtied_mib, gap_report);
            gap_report = 0;
            next_report += report_ms;
            if (next_report < now) next_report = now + report_ms; /* after a stall: no burst of lines */
        }
        if (now >= end) break;
        if (!rate_max) nanosleep(&tick, NULL); /* EINTR (a mark) just ends the sleep early */
    }

    for (size_t p = 0; p < pages; p++) {
        const long w = check_page(mem + p * WORDS_PER_PAGE, p, gen[p]);
        if (w >= 0) {
            emit("dirty-mem CORRUPT page=%zu word=%ld generation=%" PRIu32, p, w, gen[p]);
            free(mem);
            free(gen);
            if (g_hb_fd >= 0) close(g_hb_fd);
            return 1;
        }
    }
    emit("dirty-mem ok pages=%zu max_gap_ms=%.1f iter=%" PRIu64 " dirtied_mib=%.1f", pages, gap_all, iter,
         (double)dirtied * PAGE_BYTES / (1024.0 * 1024.0));
    free(mem);
    free(gen);
    if (g_hb_fd >= 0) close(g_hb_fd);
    return 0;
}
