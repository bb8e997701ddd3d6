/*
 * measure: runs one command and writes its wall time and resource usage.
 *
 * usage: measure RESULT_FILE TIMEOUT_S PRELOAD PROGRAM [ARGS...]
 *
 * PRELOAD ("" for none) becomes the child's LD_PRELOAD; measure itself runs
 * without one. RESULT_FILE gets `key value` lines: wall_s, maxrss_kib,
 * minflt, majflt, utime_s, stime_s, exit, signal, timed_out.
 *
 * Why a C launcher rather than Python's wait4: a forked child's ru_maxrss
 * starts at the RSS of the process it was forked from (the kernel carries the
 * high-water mark across exec), so a child of Python reports at least
 * Python's ~15 MiB. Forked from this small program, it reports its own.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static volatile sig_atomic_t timed_out;
static volatile pid_t child;

static void on_alarm(int sig)
{
    (void)sig;
    timed_out = 1;
    if (child > 0)
        kill(child, SIGKILL);
}

static double seconds(struct timeval tv)
{
    return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

int main(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr, "usage: %s RESULT_FILE TIMEOUT_S PRELOAD PROGRAM [ARGS...]\n", argv[0]);
        return 64;
    }
    const char *result_path = argv[1];
    unsigned timeout = (unsigned)atoi(argv[2]);
    const char *preload = argv[3];

    /* The child's environment: ours without LD_PRELOAD, plus PRELOAD if given. */
    size_t n = 0;
    while (environ[n])
        n++;
    char **envp = calloc(n + 2, sizeof *envp);
    char *preload_var = malloc(strlen(preload) + sizeof "LD_PRELOAD=");
    if (!envp || !preload_var)
        return 70;
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (strncmp(environ[i], "LD_PRELOAD=", 11) != 0)
            envp[k++] = environ[i];
    if (*preload) {
        strcpy(preload_var, "LD_PRELOAD=");
        strcat(preload_var, preload);
        envp[k++] = preload_var;
    }
    envp[k] = NULL;

    FILE *result = fopen(result_path, "w");
    if (!result) {
        perror(result_path);
        return 70;
    }

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sigaction(SIGALRM, &sa, NULL);

    struct timespec start, end;
    clock_gettime(CLOCK_MONOTONIC, &start);
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        return 71;
    }
    if (pid == 0) {
        execve(argv[4], argv + 4, envp);
        perror(argv[4]);
        _exit(127);
    }
    child = pid;
    if (timeout)
        alarm(timeout);

    int status;
    struct rusage usage;
    while (wait4(pid, &status, 0, &usage) < 0)
        if (errno != EINTR) {
            perror("wait4");
            return 71;
        }
    clock_gettime(CLOCK_MONOTONIC, &end);
    alarm(0);

    double wall = (double)(end.tv_sec - start.tv_sec) + (double)(end.tv_nsec - start.tv_nsec) / 1e9;
    fprintf(result,
            "wall_s %.6f\nmaxrss_kib %ld\nminflt %ld\nmajflt %ld\nutime_s %.6f\nstime_s %.6f\n"
            "exit %d\nsignal %d\ntimed_out %d\n",
            wall, usage.ru_maxrss, usage.ru_minflt, usage.ru_majflt, seconds(usage.ru_utime),
            seconds(usage.ru_stime), WIFEXITED(status) ? WEXITSTATUS(status) : -1,
            WIFSIGNALED(status) ? WTERMSIG(status) : 0, (int)timed_out);
    return fclose(result) == 0 ? 0 : 70;
}
