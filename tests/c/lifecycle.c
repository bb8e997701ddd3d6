/*
 * lifecycle.c — a process's life around the allocator, one mode per run:
 *
 *   lifecycle fork-load [FORKS]   fork FORKS times (default 200) while 4
 *                                 threads malloc/free in every tier; each
 *                                 child allocates and frees in every tier,
 *                                 starts a thread that does too, exits 0
 *   lifecycle churn [THREADS]     THREADS threads (default 10000) created
 *                                 and joined one after another; each
 *                                 allocates blocks that outlive it and frees
 *                                 blocks an earlier thread left; RSS must
 *                                 stay bounded and, after everything is
 *                                 freed and malloc_trim(0), the bytes in use
 *                                 (mallinfo2) are back where they started
 *   lifecycle dlopen LIB [N]      dlopen/dlsym/dlclose LIB (dlib.c) N times
 *                                 (default 200), keeping blocks it made
 *   lifecycle atexit              atexit, on_exit, destructor and thread-key
 *                                 handlers that malloc/free after main
 *   lifecycle env-spawn           setenv/putenv/unsetenv after start, then
 *                                 posix_spawn and fork+execve of itself
 *   lifecycle signal [N]          single-threaded: a SIGALRM handler frees
 *                                 objects handed to it, N times (default
 *                                 2000), while main only computes
 *
 * Each mode prints "all checks passed" on success; failures go to stderr
 * and make the exit status non-zero. A hang is caught by alarm() (or, in
 * the signal mode, by the test's hang guard).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common.h"

extern char **environ;

/* ---------------------------------------------------------------- helpers */

/* A block of `size` bytes whose every byte is derived from `tag`. */
static unsigned char *make(size_t size, unsigned tag)
{
    unsigned char *p = malloc(size);
    CHECK(p != NULL, "malloc(%zu) failed", size);
    if (p)
        for (size_t i = 0; i < size; i += 61)
            p[i] = (unsigned char)(tag + i);
    return p;
}

static int intact(const unsigned char *p, size_t size, unsigned tag)
{
    for (size_t i = 0; i < size; i += 61)
        if (p[i] != (unsigned char)(tag + i))
            return 0;
    return 1;
}

static void check_and_free(unsigned char *p, size_t size, unsigned tag)
{
    if (!p)
        return;
    CHECK(intact(p, size, tag), "block %p of %zu bytes (tag %u) changed", (void *)p, size, tag);
    free(p);
}

/* Allocates and frees in every tier: small, page run, large; a realloc
 * chain across them. */
static void every_tier(unsigned tag)
{
    static const size_t sizes[] = {8, 64, 200, 1000, 4000, 30000, 64 << 10, 200 << 10, 2 << 20};
    unsigned char *p[sizeof sizes / sizeof sizes[0]];
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        p[i] = make(sizes[i], tag + (unsigned)i);
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        check_and_free(p[i], sizes[i], tag + (unsigned)i);
    unsigned char *r = make(16, tag);
    for (size_t n = 32; r && n <= (1 << 20); n *= 4) {
        unsigned char *q = realloc(r, n);
        CHECK(q != NULL, "realloc to %zu failed", n);
        if (!q)
            break;
        r = q;
        for (size_t i = 0; i < n; i += 61)
            r[i] = (unsigned char)(tag + i);
    }
    free(r);
}

static long rss_kib(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long pages = 0, resident = 0;
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &resident) != 2)
            resident = 0;
        fclose(f);
    }
    return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

/* --------------------------------------------------------------- fork-load */

static atomic_int stop_load;

static void *load_thread(void *arg)
{
    uint64_t rng = (uintptr_t)arg * 0x9e3779b97f4a7c15ULL + 1;
    enum { SLOTS = 256 };
    unsigned char *slot[SLOTS] = {0};
    size_t size[SLOTS] = {0};
    unsigned tag[SLOTS] = {0};
    while (!atomic_load(&stop_load)) {
        unsigned i = (unsigned)(xorshift64star(&rng) % SLOTS);
        check_and_free(slot[i], size[i], tag[i]);
        uint64_t r = xorshift64star(&rng);
        size[i] = (r % 16 == 0) ? (size_t)(r >> 20) % (512 << 10) : (size_t)(r >> 20) % 2048 + 1;
        tag[i] = (unsigned)(r >> 8);
        slot[i] = make(size[i], tag[i]);
    }
    for (unsigned i = 0; i < SLOTS; i++)
        check_and_free(slot[i], size[i], tag[i]);
    return NULL;
}

static void *child_thread(void *arg)
{
    every_tier((unsigned)(uintptr_t)arg);
    return NULL;
}

static int fork_load(int forks)
{
    enum { LOADERS = 4 };
    pthread_t t[LOADERS];
    for (int i = 0; i < LOADERS; i++)
        pthread_create(&t[i], NULL, load_thread, (void *)(uintptr_t)(i + 1));
    int bad_children = 0;
    for (int n = 0; n < forks; n++) {
        pid_t pid = fork();
        if (pid < 0) {
            CHECK(0, "fork: %s", strerror(errno));
            break;
        }
        if (pid == 0) {
            alarm(30); /* a deadlocked child dies by SIGALRM */
            every_tier((unsigned)n);
            pthread_t c;
            if (pthread_create(&c, NULL, child_thread, (void *)(uintptr_t)n) == 0)
                pthread_join(c, NULL);
            else
                CHECK(0, "pthread_create in the child failed");
            _exit(atomic_load(&failures) ? 1 : 0);
        }
        int status;
        waitpid(pid, &status, 0);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            bad_children++;
            CHECK(0, "child %d of fork %d ended with status 0x%x%s", pid, n, status,
                  WIFSIGNALED(status) && WTERMSIG(status) == SIGALRM ? " (deadlocked)" : "");
        }
        every_tier((unsigned)n + 7);
    }
    atomic_store(&stop_load, 1);
    for (int i = 0; i < LOADERS; i++)
        pthread_join(t[i], NULL);
    printf("fork-load: %d forks under load, %d bad children\n", forks, bad_children);
    return 0;
}

/* ------------------------------------------------------------------ churn */

/* Blocks a churn thread leaves behind: a ring the next threads free from. */
enum { KEEP = 16, RING = 64 * KEEP };
struct kept {
    unsigned char *p;
    size_t size;
    unsigned tag;
};
static struct kept ring[RING];
static size_t ring_head; /* guarded by the join: one churn thread at a time */

static void *churn_thread(void *arg)
{
    unsigned id = (unsigned)(uintptr_t)arg;
    uint64_t rng = id * 0x9e3779b97f4a7c15ULL + 1;
    /* Some short-lived objects of its own (they go through its bins). */
    for (int i = 0; i < 32; i++) {
        size_t n = (size_t)(xorshift64star(&rng) % 512) + 1;
        check_and_free(make(n, id), n, id);
    }
    /* Objects that outlive the thread: each replaces one an earlier thread
     * left, which this thread frees (a cross-thread free). */
    for (int i = 0; i < KEEP; i++) {
        struct kept *k = &ring[ring_head++ % RING];
        check_and_free(k->p, k->size, k->tag);
        uint64_t r = xorshift64star(&rng);
        k->size = (r % 64 == 0) ? 40000 : (size_t)(r >> 16) % 3000 + 1;
        k->tag = (unsigned)(r >> 40);
        k->p = make(k->size, k->tag);
    }
    return NULL;
}

static int churn(int threads)
{
    alarm(600);
    malloc_trim(0);
    size_t in_use_before = mallinfo2().uordblks;
    long rss_at_tenth = 0;
    for (int n = 0; n < threads; n++) {
        pthread_t t;
        int err = pthread_create(&t, NULL, churn_thread, (void *)(uintptr_t)n);
        if (err) {
            CHECK(0, "pthread_create %d: %s", n, strerror(err));
            break;
        }
        pthread_join(t, NULL);
        if (n == threads / 10)
            rss_at_tenth = rss_kib();
    }
    long rss_at_end = rss_kib();
    for (int i = 0; i < RING; i++) {
        check_and_free(ring[i].p, ring[i].size, ring[i].tag);
        ring[i].p = NULL;
    }
    malloc_trim(0);
    size_t in_use_after = mallinfo2().uordblks;
    printf("churn: %d threads; RSS %ld KiB after a tenth, %ld KiB at the end; "
           "bytes in use %zu before, %zu after freeing all and malloc_trim\n",
           threads, rss_at_tenth, rss_at_end, in_use_before, in_use_after);
    /* Nine tenths of the threads must not grow RSS by more than what a
     * single page per thread would already exceed several times over. */
    long allowed_kib = 8 * 1024;
    CHECK(rss_at_end - rss_at_tenth <= allowed_kib,
          "RSS grew by %ld KiB over the last %d threads (allowed %ld KiB)",
          rss_at_end - rss_at_tenth, threads - threads / 10, allowed_kib);
    /* Objects left in the dead threads' caches would still count as in use;
     * allow only the stdio buffer printf just allocated and similar. */
    CHECK(in_use_after <= in_use_before + 16384,
          "%zu bytes more in use after everything was freed: cached objects of exited threads lost?",
          in_use_after - in_use_before);
    return 0;
}

/* ----------------------------------------------------------------- dlopen */

static int dlopen_loop(const char *lib, int rounds)
{
    alarm(300);
    enum { KEPT = 32 };
    unsigned char *kept[KEPT] = {0};
    for (int n = 0; n < rounds; n++) {
        void *h = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
        if (!h) {
            CHECK(0, "dlopen %s: %s", lib, dlerror());
            break;
        }
        void *(*make_block)(size_t, int);
        *(void **)&make_block = dlsym(h, "dlib_make");
        CHECK(make_block != NULL, "dlsym dlib_make: %s", dlerror());
        size_t size = (size_t)(n * 977 % 70000) + 1;
        unsigned char *p = make_block ? make_block(size, n & 0xff) : NULL;
        CHECK(p != NULL, "dlib_make(%zu) failed (the library's constructor table is wrong?)", size);
        /* Pure dlopen/dlclose: blocks the library made outlive it. */
        CHECK(dlclose(h) == 0, "dlclose: %s", dlerror());
        if (p) {
            CHECK(p[0] == (unsigned char)n && p[size - 1] == (unsigned char)n, "block from the library changed");
        }
        unsigned char **slot = &kept[n % KEPT];
        free(*slot);
        *slot = p;
    }
    for (int i = 0; i < KEPT; i++)
        free(kept[i]);
    printf("dlopen: %d rounds of dlopen/dlsym/dlclose\n", rounds);
    return 0;
}

/* ----------------------------------------------------------------- atexit */

static unsigned char *global_blocks[8];
static pthread_key_t key;

static void say(const char *s)
{
    (void)!write(1, s, strlen(s));
}

static void late_work(const char *who)
{
    every_tier(7);
    char *s = strdup(who);
    CHECK(s && !strcmp(s, who), "strdup in %s", who);
    free(s);
    if (atomic_load(&failures)) {
        say(who);
        say(": FAILED\n");
        _exit(1);
    }
    say(who);
    say(": ok\n");
}

static void at_exit_1(void)
{
    late_work("atexit handler");
    for (int i = 0; i < 4; i++) {
        check_and_free(global_blocks[i], 1000 * (size_t)(i + 1), (unsigned)i);
        global_blocks[i] = NULL;
    }
}

static void on_exit_handler(int status, void *arg)
{
    CHECK(status == 0, "on_exit status %d", status);
    late_work("on_exit handler");
    free(arg);
}

__attribute__((destructor)) static void destructor(void)
{
    if (!global_blocks[7])
        return; /* another mode */
    late_work("destructor");
    for (int i = 4; i < 8; i++)
        check_and_free(global_blocks[i], 1000 * (size_t)(i + 1), (unsigned)i);
}

static void key_destructor(void *v)
{
    late_work("thread-key destructor");
    free(v);
}

static void *keyed_thread(void *arg)
{
    (void)arg;
    pthread_setspecific(key, malloc(100));
    return NULL;
}

static int at_exit_mode(void)
{
    alarm(60);
    for (int i = 0; i < 8; i++)
        global_blocks[i] = make(1000 * (size_t)(i + 1), (unsigned)i);
    atexit(at_exit_1);
    on_exit(on_exit_handler, malloc(77));
    pthread_key_create(&key, key_destructor);
    pthread_t t;
    pthread_create(&t, NULL, keyed_thread, NULL);
    pthread_join(t, NULL);
    /* The handlers print their own lines after this one. */
    printf("atexit: handlers registered\n");
    fflush(stdout);
    return 0;
}

/* -------------------------------------------------------------- env-spawn */

static int uses_buddyslab(void)
{
    Dl_info info;
    void *m = dlsym(RTLD_DEFAULT, "malloc");
    return m && dladdr(m, &info) && info.dli_fname && strstr(info.dli_fname, "libbuddyslab");
}

/* The spawned and exec'd copies: check the environment, allocate, exit. */
static int env_child(const char *how)
{
    alarm(60);
    const char *v = getenv("LIFECYCLE_VAR_500");
    CHECK(v && !strcmp(v, "value-500"), "%s: LIFECYCLE_VAR_500 is %s", how, v ? v : "(unset)");
    CHECK(getenv("LIFECYCLE_VAR_501") == NULL, "%s: an unset variable came through", how);
    CHECK(uses_buddyslab(), "%s: malloc is not libbuddyslab's (LD_PRELOAD lost?)", how);
    every_tier(3);
    return atomic_load(&failures) ? 1 : 0;
}

static int run_and_wait(pid_t pid, const char *how)
{
    int status;
    if (waitpid(pid, &status, 0) != pid) {
        CHECK(0, "waitpid %s: %s", how, strerror(errno));
        return 0;
    }
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "%s child ended with status 0x%x", how, status);
    return 1;
}

static int env_spawn(const char *self)
{
    alarm(120);
    CHECK(uses_buddyslab(), "malloc is not libbuddyslab's: run this mode under LD_PRELOAD");
    /* Grow the environment well past its start-up size (setenv reallocates
     * environ with malloc), then shrink part of it. */
    static char putenv_storage[] = "LIFECYCLE_PUT=put";
    char name[64], value[64];
    for (int i = 0; i < 1000; i++) {
        snprintf(name, sizeof name, "LIFECYCLE_VAR_%d", i);
        snprintf(value, sizeof value, "value-%d", i);
        CHECK(setenv(name, value, 1) == 0, "setenv %s", name);
    }
    CHECK(putenv(putenv_storage) == 0, "putenv");
    for (int i = 0; i < 1000; i += 2) {
        snprintf(name, sizeof name, "LIFECYCLE_VAR_%d", i + 1);
        CHECK(unsetenv(name) == 0, "unsetenv %s", name);
    }
    for (int i = 0; i < 1000; i += 2) {
        snprintf(name, sizeof name, "LIFECYCLE_VAR_%d", i);
        snprintf(value, sizeof value, "value-%d", i);
        const char *v = getenv(name);
        CHECK(v && !strcmp(v, value), "getenv %s gave %s", name, v ? v : "(unset)");
    }
    every_tier(1);

    for (int n = 0; n < 20; n++) {
        pid_t pid;
        char *argv_spawn[] = {(char *)self, "spawn-child", NULL};
        int err = posix_spawn(&pid, self, NULL, NULL, argv_spawn, environ);
        CHECK(err == 0, "posix_spawn: %s", strerror(err));
        if (!err)
            run_and_wait(pid, "posix_spawn");

        pid = fork();
        if (pid == 0) {
            char *argv_exec[] = {(char *)self, "exec-child", NULL};
            execve(self, argv_exec, environ);
            _exit(127);
        }
        CHECK(pid > 0, "fork: %s", strerror(errno));
        if (pid > 0)
            run_and_wait(pid, "fork+execve");
        every_tier((unsigned)n);
    }
    printf("env-spawn: 1000 setenv, 500 unsetenv, 20 posix_spawn and 20 fork+execve\n");
    return 0;
}

/* ----------------------------------------------------------------- signal */

/* Objects handed to the handler: main allocates them and publishes them
 * with signals blocked; the handler alone frees them. */
enum { MAILBOX = 64 };
static unsigned char *volatile mailbox[MAILBOX];
static volatile sig_atomic_t handled;

static void on_alarm(int sig)
{
    (void)sig;
    for (int i = 0; i < MAILBOX; i++) {
        unsigned char *p = mailbox[i];
        if (p) {
            mailbox[i] = NULL;
            if (p[0] != (unsigned char)i || p[99] != (unsigned char)i)
                (void)!write(2, "FAIL: handler found a changed object\n", 37), _exit(1);
            free(p);
        }
    }
    handled++;
}

static int signal_mode(int rounds)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGALRM, &sa, NULL);
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGALRM);
    struct itimerval it = {{0, 200}, {0, 200}};
    setitimer(ITIMER_REAL, &it, NULL);
    volatile uint64_t spin = 1;
    while (handled < rounds) {
        /* Refill the mailbox with signals blocked: the allocator is not
         * re-entered from a handler while main is inside it. */
        sigprocmask(SIG_BLOCK, &block, &old);
        for (int i = 0; i < MAILBOX; i++)
            if (!mailbox[i]) {
                unsigned char *p = malloc((size_t)(i * 37 % 4000) + 100);
                if (p) {
                    memset(p, i, 100);
                    mailbox[i] = p;
                }
            }
        sigprocmask(SIG_SETMASK, &old, NULL);
        for (int i = 0; i < 20000; i++)
            spin = spin * 6364136223846793005ULL + 1;
    }
    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &off, NULL);
    for (int i = 0; i < MAILBOX; i++)
        free(mailbox[i]);
    printf("signal: %d handler runs freed objects\n", (int)handled);
    return 0;
}

/* ------------------------------------------------------------------- main */

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: lifecycle MODE [ARG]\n");
        return 2;
    }
    const char *mode = argv[1];
    int rc;
    if (!strcmp(mode, "fork-load"))
        rc = fork_load(argc > 2 ? atoi(argv[2]) : 200);
    else if (!strcmp(mode, "churn"))
        rc = churn(argc > 2 ? atoi(argv[2]) : 10000);
    else if (!strcmp(mode, "dlopen") && argc > 2)
        rc = dlopen_loop(argv[2], argc > 3 ? atoi(argv[3]) : 200);
    else if (!strcmp(mode, "atexit"))
        rc = at_exit_mode();
    else if (!strcmp(mode, "env-spawn"))
        rc = env_spawn(argv[0]);
    else if (!strcmp(mode, "spawn-child") || !strcmp(mode, "exec-child"))
        return env_child(mode);
    else if (!strcmp(mode, "signal"))
        rc = signal_mode(argc > 2 ? atoi(argv[2]) : 2000);
    else {
        fprintf(stderr, "unknown mode %s\n", mode);
        return 2;
    }
    if (rc || checks_failed("lifecycle %s", mode))
        return 1;
    printf("all checks passed\n");
    return 0;
}
