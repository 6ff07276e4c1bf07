/*
 * The sandbox ("pause") process of the real e2e node's pods.
 *
 * containerd starts one per pod (the image e2e/node/images.sh builds and tags as the
 * sandbox image in the generated containerd config). It holds the pod's namespaces
 * open, so it only has to: sleep until told to stop, exit 0 on SIGTERM or SIGINT, and
 * reap the children re-parented to it (it is PID 1 of the pod's PID namespace when the pod
 * shares one). Built static (gcc -static), so the image needs no libc.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile sig_atomic_t stop_requested;

static void on_stop(int sig) {
    (void)sig;
    stop_requested = 1;
}

static void on_child(int sig) {
    (void)sig;
    int saved = errno;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
    errno = saved;
}

static int install(int sig, void (*handler)(int)) {
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = handler;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = sig == SIGCHLD ? SA_NOCLDSTOP : 0;
    return sigaction(sig, &sa, NULL);
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "-v") == 0) {
        puts("llm-operator e2e pause 1.0");
        return 0;
    }
    if (getpid() != 1) {
        fputs("pause: warning: not PID 1\n", stderr);
    }
    if (install(SIGINT, on_stop) || install(SIGTERM, on_stop) || install(SIGCHLD, on_child)) {
        perror("pause: sigaction");
        return 1;
    }
    /* NOTE: the signals stay blocked except inside sigsuspend(), so a stop signal that
     * arrives between the check and the wait is not lost (as it could be with pause()). */
    sigset_t handled, waiting;
    sigemptyset(&handled);
    sigaddset(&handled, SIGINT);
    sigaddset(&handled, SIGTERM);
    sigaddset(&handled, SIGCHLD);
    if (sigprocmask(SIG_BLOCK, &handled, &waiting)) {
        perror("pause: sigprocmask");
        return 1;
    }
    sigdelset(&waiting, SIGINT);
    sigdelset(&waiting, SIGTERM);
    sigdelset(&waiting, SIGCHLD);
    while (!stop_requested) {
        sigsuspend(&waiting);
    }
    return 0;
}
