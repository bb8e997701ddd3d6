/*
 * threads.c — many threads, objects that change hands, threads that die
 * with objects still live, and fork() while all of that is going on.
 *
 *   threads [NTHREADS]      (default 4)
 *
 * Phase 1, exchange: every thread allocates random sizes, writes a pattern
 *   derived from its id and a sequence number, keeps some objects and sends
 *   the others to a random thread through that thread's mutex-protected
 *   inbox; the receiver checks the pattern (sometimes after a realloc) and
 *   frees.  Meanwhile the main thread forks several times; each child
 *   allocates and frees in every tier, starts a thread that does the same,
 *   and exits 0.  A child that deadlocks is killed by alarm() and reported.
 * Phase 2, orphans: threads allocate, exit, and leave their objects to the
 *   main thread, which checks and frees them.
 * Phase 3, churn: short-lived threads in waves (thread-exit cleanup).
 * Phase 4, large: half the threads resize large blocks with realloc (mremap
 *   moves and shrinks mappings) while the other half map and unmap large
 *   blocks; no request may fail (the region bookkeeping must not lag the
 *   kernel's view, or a fresh mapping collides with a stale record).
 *
 * Prints one summary line on stdout; failures on stderr; exits 1 on any.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_THREADS 64
#define MAX_PRINTED 40
#include "common.h"

/* ---------------------------------------------------------------- objects */

#define MAGIC 0x0b1ec7u

struct obj {
    struct obj *next; /* inbox link */
    uint32_t magic;
    uint32_t owner; /* thread id that allocated and filled it */
    uint64_t seq;
    size_t size; /* requested size, header included */
    unsigned char data[];
};

struct rng {
    uint64_t s;
};

static uint64_t rng_next(struct rng *r)
{
    return xorshift64star(&r->s);
}

static size_t rng_below(struct rng *r, size_t n)
{
    return (size_t)(rng_next(r) % n);
}

static size_t random_size(struct rng *r)
{
    unsigned k = (unsigned)rng_below(r, 1000);
    size_t min = sizeof(struct obj);
    if (k < 750)
        return min + rng_below(r, 256);
    if (k < 950)
        return min + 256 + rng_below(r, 4096);
    if (k < 998)
        return min + 4096 + rng_below(r, 60 * 1024);
    return 128 * 1024 + rng_below(r, 200 * 1024);
}

static inline unsigned char pattern_byte(uint64_t tag, size_t i)
{
    uint64_t x = tag + i * 0x9E3779B97F4A7C15ULL;
    return (unsigned char)(x >> 56 ^ x >> 13 ^ i);
}

static uint64_t obj_tag(const struct obj *o)
{
    return ((uint64_t)o->owner << 48) ^ o->seq ^ ((uint64_t)o->size << 20);
}

static struct obj *obj_new(struct rng *r, uint32_t owner, uint64_t seq)
{
    size_t n = random_size(r);
    struct obj *o;
    if (rng_below(r, 16) == 0) {
        void *p = NULL;
        size_t align = (size_t)32 << rng_below(r, 8);
        int rc = posix_memalign(&p, align, n);
        CHECK(rc == 0 && p != NULL, "thread %u: posix_memalign(%zu, %zu) = %d", owner, align,
              n, rc);
        o = p;
    } else {
        errno = 0;
        o = malloc(n);
        int e = errno;
        CHECK(o != NULL, "thread %u: malloc(%zu) returned NULL, errno %d (%s)", owner, n, e,
              strerror(e));
    }
    if (!o)
        return NULL;
    CHECK(((uintptr_t)o & 15) == 0, "thread %u: malloc(%zu) = %p not 16-byte aligned", owner,
          n, (void *)o);
    o->next = NULL;
    o->magic = MAGIC;
    o->owner = owner;
    o->seq = seq;
    o->size = n;
    uint64_t tag = obj_tag(o);
    size_t len = n - sizeof *o;
    for (size_t i = 0; i < len; i++)
        o->data[i] = pattern_byte(tag, i);
    return o;
}

/* Checks an object's header and pattern; returns 1 if intact. */
static int obj_check(const struct obj *o, uint32_t checker, const char *where)
{
    if (o->magic != MAGIC) {
        CHECK(0, "thread %u (%s): object %p has a bad magic %#x", checker, where,
              (const void *)o, o->magic);
        return 0;
    }
    uint64_t tag = obj_tag(o);
    size_t len = o->size - sizeof *o;
    for (size_t i = 0; i < len; i++) {
        if (o->data[i] != pattern_byte(tag, i)) {
            CHECK(0, "thread %u (%s): object %p (owner %u, seq %llu, size %zu) corrupted at "
                  "byte %zu", checker, where, (const void *)o, o->owner,
                  (unsigned long long)o->seq, o->size, i);
            return 0;
        }
    }
    return 1;
}

/* Checks, sometimes grows with realloc and checks again, then frees. */
static void obj_release(struct obj *o, struct rng *r, uint32_t checker, const char *where)
{
    if (!obj_check(o, checker, where))
        return; /* leak it: freeing a corrupted block could crash the run */
    if (rng_below(r, 8) == 0) {
        size_t old = o->size;
        size_t want = old + 1 + rng_below(r, 3 * old);
        errno = 0;
        struct obj *q = realloc(o, want);
        int e = errno;
        CHECK(q != NULL, "thread %u: realloc(%p, %zu -> %zu) returned NULL, errno %d (%s)",
              checker, (void *)o, old, want, e, strerror(e));
        if (!q) {
            free(o);
            return;
        }
        obj_check(q, checker, "after realloc");
        o = q;
    }
    o->magic = 0;
    free(o);
}

/* ----------------------------------------------------------- phase 1 */

#define INBOX_LIMIT 2000
#define LOCAL_SLOTS 128

struct inbox {
    pthread_mutex_t lock;
    struct obj *head;
    size_t count;
} __attribute__((aligned(64)));

static struct inbox inbox[MAX_THREADS];
static int nthreads;
static long iterations;
static atomic_int finished;
static atomic_int forks_done;
static atomic_long sent_total, received_total;

static void drain(uint32_t id, struct rng *r, const char *where)
{
    struct inbox *box = &inbox[id];
    pthread_mutex_lock(&box->lock);
    struct obj *list = box->head;
    box->head = NULL;
    box->count = 0;
    pthread_mutex_unlock(&box->lock);
    long n = 0;
    while (list) {
        struct obj *next = list->next;
        obj_release(list, r, id, where);
        list = next;
        n++;
    }
    atomic_fetch_add(&received_total, n);
}

/* One step of work: allocate, keep or send; returns the new seq. */
static uint64_t step(uint32_t id, struct rng *r, struct obj **local, uint64_t seq)
{
    struct obj *o = obj_new(r, id, seq++);
    if (!o)
        return seq;
    if (nthreads > 1 && rng_below(r, 2) == 0) {
        uint32_t to = (uint32_t)rng_below(r, (size_t)nthreads - 1);
        if (to >= id)
            to++;
        struct inbox *box = &inbox[to];
        pthread_mutex_lock(&box->lock);
        int room = box->count < INBOX_LIMIT;
        if (room) {
            o->next = box->head;
            box->head = o;
            box->count++;
        }
        pthread_mutex_unlock(&box->lock);
        if (room) {
            atomic_fetch_add(&sent_total, 1);
            return seq;
        }
    }
    size_t slot = rng_below(r, LOCAL_SLOTS);
    if (local[slot])
        obj_release(local[slot], r, id, "local");
    local[slot] = o;
    return seq;
}

static void *exchange_thread(void *arg)
{
    uint32_t id = (uint32_t)(uintptr_t)arg;
    struct rng r = {0x1234567ULL * (id + 1) + 0x9E3779B97F4A7C15ULL};
    struct obj *local[LOCAL_SLOTS] = {0};
    uint64_t seq = 0;
    for (long it = 0; it < iterations; it++) {
        seq = step(id, &r, local, seq);
        if ((it & 15) == 0)
            drain(id, &r, "inbox");
    }
    /* Keep the allocator busy until the main thread has done its forks, so
     * that every fork happens with all threads allocating. */
    while (!atomic_load(&forks_done)) {
        seq = step(id, &r, local, seq);
        drain(id, &r, "inbox");
    }
    atomic_fetch_add(&finished, 1);
    while (atomic_load(&finished) < nthreads) {
        drain(id, &r, "inbox");
        sched_yield();
    }
    drain(id, &r, "final inbox");
    for (int i = 0; i < LOCAL_SLOTS; i++)
        if (local[i])
            obj_release(local[i], &r, id, "local at exit");
    return NULL;
}

static void *child_thread(void *arg)
{
    struct rng r = {(uintptr_t)arg | 1};
    for (int i = 0; i < 2000; i++) {
        struct obj *o = obj_new(&r, 999, (uint64_t)i);
        if (o)
            obj_release(o, &r, 999, "child thread");
    }
    return NULL;
}

/* In the forked child: the allocator must work, in this thread and new ones. */
static void child_work(int round)
{
    alarm(30); /* a deadlocked child dies by SIGALRM and the parent says so */
    int inherited = atomic_load(&failures); /* the parent's, copied by fork */
    struct rng r = {0xC0FFEEULL + (uint64_t)round};
    static const size_t sizes[] = {1, 16, 100, 1000, 5000, 40000, 200000, 3u << 20};
    void *keep[64];
    for (int i = 0; i < 64; i++) {
        size_t n = sizes[i % 8] + (size_t)i;
        keep[i] = (i % 3 == 0) ? calloc(1, n) : malloc(n);
        if (!keep[i])
            _exit(3);
        memset(keep[i], i, n);
    }
    for (int i = 0; i < 64; i += 2) {
        keep[i] = realloc(keep[i], sizes[(i + 3) % 8] + 7);
        if (!keep[i])
            _exit(4);
    }
    for (int i = 0; i < 5000; i++) {
        struct obj *o = obj_new(&r, 1000, (uint64_t)i);
        if (o)
            obj_release(o, &r, 1000, "forked child");
    }
    pthread_t t;
    if (pthread_create(&t, NULL, child_thread, (void *)(uintptr_t)(round + 7)) != 0)
        _exit(5);
    pthread_join(t, NULL);
    for (int i = 0; i < 64; i++)
        free(keep[i]);
    /* exit, not _exit: atexit handlers and stdio run too. */
    exit(atomic_load(&failures) != inherited ? 6 : 0);
}

static void do_forks(int count)
{
    for (int round = 0; round < count; round++) {
        fflush(NULL);
        pid_t pid = fork();
        if (pid < 0) {
            CHECK(0, "fork() failed: %s", strerror(errno));
            return;
        }
        if (pid == 0)
            child_work(round);
        int status = 0;
        pid_t w;
        do
            w = waitpid(pid, &status, 0);
        while (w < 0 && errno == EINTR);
        CHECK(w == pid, "waitpid failed: %s", strerror(errno));
        if (WIFSIGNALED(status))
            CHECK(0, "fork round %d: child killed by signal %d%s", round, WTERMSIG(status),
                  WTERMSIG(status) == SIGALRM ? " (deadlocked after fork?)" : "");
        else
            CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                  "fork round %d: child exited with status %d", round, WEXITSTATUS(status));
        /* Let the threads run on between forks. */
        for (int i = 0; i < 200; i++) {
            void *p = malloc(64 + (size_t)i * 16);
            free(p);
        }
        sched_yield();
    }
}

/* ----------------------------------------------------------- phase 2 */

#define ORPHANS_PER_THREAD 1000

static struct obj *orphans[MAX_THREADS][ORPHANS_PER_THREAD];

static void *orphan_thread(void *arg)
{
    uint32_t id = (uint32_t)(uintptr_t)arg;
    struct rng r = {0xABCDEF12345ULL * (id + 3)};
    /* Churn first, so the thread's caches hold something when it exits. */
    for (int i = 0; i < 5000; i++) {
        struct obj *o = obj_new(&r, id, (uint64_t)i);
        if (o)
            obj_release(o, &r, id, "orphan churn");
    }
    for (int i = 0; i < ORPHANS_PER_THREAD; i++)
        orphans[id][i] = obj_new(&r, 100 + id, (uint64_t)i);
    return NULL;
}

/* ----------------------------------------------------------- phase 3 */

static struct obj *churn_result[MAX_THREADS];

static void *churn_thread(void *arg)
{
    uint32_t id = (uint32_t)(uintptr_t)arg;
    struct rng r = {0x5555ULL + id};
    void *hold[32] = {0};
    for (int i = 0; i < 1000; i++) {
        int k = (int)rng_below(&r, 32);
        free(hold[k]);
        hold[k] = malloc(1 + rng_below(&r, 2000));
    }
    for (int k = 0; k < 32; k++)
        free(hold[k]);
    churn_result[id] = obj_new(&r, 200 + id, 1);
    return NULL;
}

/* ----------------------------------------------------------- phase 4 */

#define LARGE_ROUNDS 20000

static void *large_resizer(void *arg)
{
    uint32_t id = (uint32_t)(uintptr_t)arg;
    struct rng r = {0x7777ULL * (id + 1)};
    size_t size = 200000;
    unsigned char *p = malloc(size);
    CHECK(p != NULL, "thread %u: malloc(%zu) returned NULL", id, size);
    if (!p)
        return NULL;
    memset(p, (int)id, size);
    for (int i = 0; i < LARGE_ROUNDS; i++) {
        size_t want = 130000 + rng_below(&r, 400000);
        errno = 0;
        unsigned char *q = realloc(p, want);
        int e = errno;
        CHECK(q != NULL, "thread %u: realloc(large %zu -> %zu) returned NULL, errno %d (%s)",
              id, size, want, e, strerror(e));
        if (!q)
            continue;
        size_t keep = size < want ? size : want;
        CHECK(q[0] == (unsigned char)id && q[keep - 1] == (unsigned char)id,
              "thread %u: realloc(large %zu -> %zu) lost the contents", id, size, want);
        if (want > size)
            memset(q + size, (int)id, want - size);
        p = q;
        size = want;
    }
    free(p);
    return NULL;
}

static void *large_mapper(void *arg)
{
    uint32_t id = (uint32_t)(uintptr_t)arg;
    struct rng r = {0x8888ULL * (id + 1)};
    for (int i = 0; i < LARGE_ROUNDS; i++) {
        size_t n = 130000 + rng_below(&r, 400000);
        errno = 0;
        unsigned char *p = malloc(n);
        int e = errno;
        CHECK(p != NULL, "thread %u: malloc(large %zu) returned NULL, errno %d (%s)", id, n, e,
              strerror(e));
        if (!p)
            continue;
        p[0] = 1;
        p[n - 1] = 2;
        free(p);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    nthreads = argc > 1 ? atoi(argv[1]) : 4;
    if (nthreads < 1 || nthreads > MAX_THREADS) {
        fprintf(stderr, "usage: threads [1..%d]\n", MAX_THREADS);
        return 2;
    }
    iterations = 400000 / nthreads;
    if (iterations < 20000)
        iterations = 20000;
    setvbuf(stdout, NULL, _IONBF, 0);

    /* Phase 1: exchange, with forks in the middle. */
    pthread_t tid[MAX_THREADS];
    for (int i = 0; i < nthreads; i++)
        pthread_mutex_init(&inbox[i].lock, NULL);
    for (int i = 0; i < nthreads; i++) {
        int rc = pthread_create(&tid[i], NULL, exchange_thread, (void *)(uintptr_t)i);
        if (rc != 0) {
            fprintf(stderr, "pthread_create: %s\n", strerror(rc));
            return 1;
        }
    }
    do_forks(6);
    atomic_store(&forks_done, 1);
    for (int i = 0; i < nthreads; i++)
        pthread_join(tid[i], NULL);
    struct rng mr = {42};
    for (int i = 0; i < nthreads; i++) {
        CHECK(inbox[i].count == 0, "inbox %d still holds %zu objects after the final drain", i,
              inbox[i].count);
        drain((uint32_t)i, &mr, "main, leftover inbox");
    }
    CHECK(atomic_load(&sent_total) == atomic_load(&received_total),
          "sent %ld objects between threads but %ld were received",
          atomic_load(&sent_total), atomic_load(&received_total));

    /* Phase 2: threads exit with their objects live; main frees them. */
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < nthreads; i++)
            pthread_create(&tid[i], NULL, orphan_thread, (void *)(uintptr_t)i);
        for (int i = 0; i < nthreads; i++)
            pthread_join(tid[i], NULL);
        for (int i = 0; i < nthreads; i++)
            for (int k = 0; k < ORPHANS_PER_THREAD; k++) {
                struct obj *o = orphans[i][k];
                CHECK(o != NULL, "orphan %d/%d missing", i, k);
                if (o)
                    obj_release(o, &mr, 0, "main, orphan of an exited thread");
                orphans[i][k] = NULL;
            }
    }

    /* Phase 3: many short-lived threads. */
    int churned = 0;
    for (int wave = 0; wave < 12; wave++) {
        for (int i = 0; i < nthreads; i++)
            pthread_create(&tid[i], NULL, churn_thread, (void *)(uintptr_t)i);
        for (int i = 0; i < nthreads; i++) {
            pthread_join(tid[i], NULL);
            if (churn_result[i])
                obj_release(churn_result[i], &mr, 0, "main, churn result");
            churn_result[i] = NULL;
            churned++;
        }
    }

    /* Phase 4: large blocks resized in some threads, mapped in others. */
    int nlarge = nthreads < 2 ? 2 : nthreads;
    for (int i = 0; i < nlarge; i++)
        pthread_create(&tid[i], NULL, i % 2 ? large_mapper : large_resizer,
                       (void *)(uintptr_t)i);
    for (int i = 0; i < nlarge; i++)
        pthread_join(tid[i], NULL);

    if (checks_failed("threads(%d)", nthreads))
        return 1;
    printf("threads(%d): all checks passed (%ld objects exchanged, 6 forks, %d short threads, "
           "%d threads on large blocks)\n",
           nthreads, atomic_load(&sent_total), churned, nlarge);
    return 0;
}
