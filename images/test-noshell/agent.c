/* ws-agent: a stand-in agent for the image with no shell at all (FROM
 * scratch, this static binary and nothing else). It prints its uid, HOME
 * and prompt, writes /workspace/task-<prompt>.txt and /tmp/task-<prompt>.txt,
 * lists /workspace, and reads every file named in its other arguments
 * (printing each one's first line). A prompt "sleep:N" sleeps N seconds
 * first. It exits 1 if anything failed. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int write_file(const char *dir, const char *prompt) {
    char path[1024];
    snprintf(path, sizeof path, "%s/task-%s.txt", dir, prompt);
    FILE *f = fopen(path, "w");
    if (!f || fprintf(f, "written by ws-agent\n") < 0 || fclose(f) != 0) {
        printf("ws-agent: cannot write %s\n", path);
        return 1;
    }
    printf("ws-agent: wrote %s\n", path);
    return 0;
}

int main(int argc, char **argv) {
    const char *prompt = argc > 1 ? argv[1] : "";
    const char *home = getenv("HOME");
    int bad = 0;
    printf("ws-agent: uid=%d HOME=%s prompt=%s\n", (int)getuid(), home ? home : "", prompt);
    if (strncmp(prompt, "sleep:", 6) == 0) {
        fflush(stdout);
        sleep((unsigned)atoi(prompt + 6));
        prompt = "slept";
    }
    bad |= write_file("/workspace", prompt);
    bad |= write_file("/tmp", prompt);
    DIR *d = opendir("/workspace");
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)) != NULL)
            if (e->d_name[0] != '.') printf("ws-agent: in /workspace: %s\n", e->d_name);
        closedir(d);
    }
    for (int i = 2; i < argc; i++) {
        char line[512] = "";
        FILE *f = fopen(argv[i], "r");
        if (!f) {
            printf("ws-agent: cannot read %s\n", argv[i]);
            bad = 1;
            continue;
        }
        if (!fgets(line, sizeof line, f)) line[0] = 0;
        fclose(f);
        line[strcspn(line, "\n")] = 0;
        printf("ws-agent: read %s: %s\n", argv[i], line);
    }
    printf(bad ? "ws-agent: FAILED\n" : "ws-agent: ok\n");
    return bad;
}
