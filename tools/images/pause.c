/* The pod sandbox's process (containerd's sandbox_image): it holds the pod's namespaces and
 * does nothing until it is told to stop. Built statically by tools/images/build.sh. */
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

static void stop(int sig) { (void)sig; _exit(0); }

int main(void) {
    signal(SIGINT, stop);
    signal(SIGTERM, stop);
    for (;;) pause();
}
