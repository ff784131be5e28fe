/* Replays a boot trace by many libiscsi sessions at once, one volume each (tools/bench-iscsi).
 *
 *   bench-iscsi-replay [-q DEPTH] [-m MAXKIB] [-p SERVER_PID] TRACE URLS_FILE
 *
 * TRACE is a text file of runs, one a line: "OFFSET LENGTH" in bytes, in the order a boot
 * first read them. URLS_FILE holds one session a line: "INITIATOR iscsi://HOST:PORT/IQN/LUN".
 * Every session logs in first (one after the other, not timed); then all of them read the whole
 * trace at once, each run cut into reads of at most MAXKIB KiB (default 128), DEPTH reads in
 * flight per session (default 4), as a booting server's initiator does.
 *
 * Prints key=value lines: sessions, requests, bytes, seconds (first read to last answer),
 * mb_s (aggregate), latency of each read as this client saw it (submit to answer: p50_us,
 * p99_us, max_us), the slowest session's time (slowest_s), and with -p the server's memory
 * (VmRSS before login, with every session idle, and the peak seen during the replay) and
 * the bytes it read from files during the replay (rchar of /proc/PID/io).
 *
 * One thread polls every session's socket: the latency includes this client's own delay in
 * getting to an answer, the same for whichever server it talks to.
 */
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>

struct run {
    uint64_t off, len;
};

struct sess {
    struct iscsi_context *iscsi;
    int lun;
    size_t run;      /* next run to read from */
    uint64_t at;     /* next offset within it */
    int inflight;
    int done;
    double finished; /* seconds since the start */
};

struct req {
    struct sess *s;
    double sent;
};

static struct run *runs;
static size_t nruns;
static uint64_t maxreq = 128 << 10;
static int depth = 4;
static double t0;
static uint64_t requests, bytes, failures;
/* Latency histogram: microseconds, 64 buckets per power of two above 64 us. */
#define HBUCKETS (64 * 40)
static uint64_t hist[HBUCKETS];
static double maxlat;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int bucket(double us)
{
    uint64_t v = (uint64_t)us;
    if (v < 64)
        return (int)v;
    int e = 63 - __builtin_clzll(v); /* >= 6 */
    int b = 64 + (e - 6) * 64 + (int)((v >> (e - 6)) & 63);
    return b < HBUCKETS ? b : HBUCKETS - 1;
}

static double bucket_value(int b)
{
    if (b < 64)
        return b;
    int e = (b - 64) / 64 + 6;
    int m = (b - 64) % 64;
    return (double)(((uint64_t)64 + m) << (e - 6));
}

static double percentile(double p)
{
    uint64_t want = (uint64_t)(p * requests), seen = 0;
    for (int b = 0; b < HBUCKETS; b++) {
        seen += hist[b];
        if (seen > want)
            return bucket_value(b);
    }
    return maxlat;
}

static long proc_field(int pid, const char *file, const char *key)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/%s", pid, file);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    long v = -1;
    size_t k = strlen(key);
    while (fgets(line, sizeof line, f))
        if (strncmp(line, key, k) == 0) {
            v = strtol(line + k, NULL, 10);
            break;
        }
    fclose(f);
    return v;
}

static void submit(struct sess *s);

static void answered(struct iscsi_context *iscsi, int status, void *data, void *priv)
{
    struct req *r = priv;
    struct scsi_task *task = data;
    struct sess *s = r->s;
    double lat = (now() - r->sent) * 1e6;
    (void)iscsi;
    if (status != SCSI_STATUS_GOOD) {
        failures++;
    } else {
        bytes += task->datain.size;
    }
    requests++;
    hist[bucket(lat)]++;
    if (lat > maxlat)
        maxlat = lat;
    scsi_free_scsi_task(task);
    free(r);
    s->inflight--;
    submit(s);
}

/* Keeps DEPTH reads of the trace in flight on s, in trace order. */
static void submit(struct sess *s)
{
    while (s->inflight < depth && s->run < nruns) {
        struct run *rn = &runs[s->run];
        uint64_t n = rn->off + rn->len - s->at;
        if (n > maxreq)
            n = maxreq;
        struct req *r = malloc(sizeof *r);
        r->s = s;
        r->sent = now();
        if (!iscsi_read16_task(s->iscsi, s->lun, s->at / 512, (uint32_t)n, 512, 0, 0, 0, 0, 0,
                               answered, r)) {
            fprintf(stderr, "read16: %s\n", iscsi_get_error(s->iscsi));
            exit(1);
        }
        s->inflight++;
        s->at += n;
        if (s->at >= rn->off + rn->len && ++s->run < nruns)
            s->at = runs[s->run].off;
    }
    if (s->inflight == 0 && s->run >= nruns && !s->done) {
        s->done = 1;
        s->finished = now() - t0;
    }
}

int main(int argc, char **argv)
{
    int pid = 0, opt;
    while ((opt = getopt(argc, argv, "q:m:p:")) != -1) {
        switch (opt) {
        case 'q': depth = atoi(optarg); break;
        case 'm': maxreq = (uint64_t)atoi(optarg) << 10; break;
        case 'p': pid = atoi(optarg); break;
        default: fprintf(stderr, "usage: %s [-q DEPTH] [-m MAXKIB] [-p PID] TRACE URLS\n", argv[0]); return 2;
        }
    }
    if (argc - optind != 2 || depth < 1 || maxreq < 512) {
        fprintf(stderr, "usage: %s [-q DEPTH] [-m MAXKIB] [-p PID] TRACE URLS\n", argv[0]);
        return 2;
    }
    FILE *f = fopen(argv[optind], "r");
    if (!f) {
        perror(argv[optind]);
        return 1;
    }
    size_t cap = 0;
    unsigned long long o, l;
    while (fscanf(f, "%llu %llu", &o, &l) == 2) {
        if (l == 0 || o % 512 || l % 512) {
            fprintf(stderr, "%s: run %llu+%llu is not whole 512-byte blocks\n", argv[optind], o, l);
            return 1;
        }
        if (nruns == cap)
            runs = realloc(runs, (cap = cap * 2 + 64) * sizeof *runs);
        runs[nruns++] = (struct run){o, l};
    }
    fclose(f);
    if (nruns == 0) {
        fprintf(stderr, "%s: no runs\n", argv[optind]);
        return 1;
    }

    f = fopen(argv[optind + 1], "r");
    if (!f) {
        perror(argv[optind + 1]);
        return 1;
    }
    size_t nsess = 0, scap = 0;
    struct sess *sess = NULL;
    char ini[512], url[1024];
    long rss0 = pid ? proc_field(pid, "status", "VmRSS:") : -1;
    while (fscanf(f, "%511s %1023s", ini, url) == 2) {
        struct iscsi_context *iscsi = iscsi_create_context(ini);
        struct iscsi_url *u = iscsi ? iscsi_parse_full_url(iscsi, url) : NULL;
        if (!u) {
            fprintf(stderr, "%s: %s\n", url, iscsi ? iscsi_get_error(iscsi) : "no context");
            return 1;
        }
        iscsi_set_targetname(iscsi, u->target);
        iscsi_set_session_type(iscsi, ISCSI_SESSION_NORMAL);
        iscsi_set_header_digest(iscsi, ISCSI_HEADER_DIGEST_NONE);
        if (iscsi_full_connect_sync(iscsi, u->portal, u->lun) != 0) {
            fprintf(stderr, "login %zu to %s: %s\n", nsess + 1, url, iscsi_get_error(iscsi));
            return 1;
        }
        if (nsess == scap)
            sess = realloc(sess, (scap = scap * 2 + 64) * sizeof *sess);
        sess[nsess++] = (struct sess){.iscsi = iscsi, .lun = u->lun, .at = runs[0].off};
        iscsi_destroy_url(u);
    }
    fclose(f);
    struct pollfd *pfd = calloc(nsess, sizeof *pfd);
    /* Idle: every session logged in, nothing in flight. Answer pings while the server
     * settles, then read its memory. */
    for (double until = now() + 1.0; now() < until;) {
        for (size_t i = 0; i < nsess; i++) {
            pfd[i].fd = iscsi_get_fd(sess[i].iscsi);
            pfd[i].events = iscsi_which_events(sess[i].iscsi);
        }
        poll(pfd, nsess, 100);
        for (size_t i = 0; i < nsess; i++)
            if (pfd[i].revents && iscsi_service(sess[i].iscsi, pfd[i].revents) < 0) {
                fprintf(stderr, "session %zu: %s\n", i + 1, iscsi_get_error(sess[i].iscsi));
                return 1;
            }
    }
    long rss_idle = pid ? proc_field(pid, "status", "VmRSS:") : -1;
    long rchar0 = pid ? proc_field(pid, "io", "rchar:") : -1;
    long rss_peak = rss_idle;

    t0 = now();
    for (size_t i = 0; i < nsess; i++)
        submit(&sess[i]);
    size_t done = 0;
    double next_sample = t0 + 0.05;
    while (done < nsess) {
        for (size_t i = 0; i < nsess; i++) {
            pfd[i].fd = iscsi_get_fd(sess[i].iscsi);
            pfd[i].events = iscsi_which_events(sess[i].iscsi);
        }
        if (poll(pfd, nsess, 1000) < 0 && errno != EINTR) {
            perror("poll");
            return 1;
        }
        for (size_t i = 0; i < nsess; i++)
            if (pfd[i].revents && iscsi_service(sess[i].iscsi, pfd[i].revents) < 0) {
                fprintf(stderr, "session %zu: %s\n", i + 1, iscsi_get_error(sess[i].iscsi));
                return 1;
            }
        done = 0;
        for (size_t i = 0; i < nsess; i++)
            done += sess[i].done;
        if (pid && now() >= next_sample) {
            long r = proc_field(pid, "status", "VmRSS:");
            if (r > rss_peak)
                rss_peak = r;
            next_sample = now() + 0.05;
        }
    }
    double secs = now() - t0;
    long rchar1 = pid ? proc_field(pid, "io", "rchar:") : -1;
    double slowest = 0;
    for (size_t i = 0; i < nsess; i++)
        if (sess[i].finished > slowest)
            slowest = sess[i].finished;
    printf("sessions=%zu\nrequests=%llu\nfailures=%llu\nbytes=%llu\nseconds=%.3f\nmb_s=%.1f\n",
           nsess, (unsigned long long)requests, (unsigned long long)failures,
           (unsigned long long)bytes, secs, bytes / secs / 1e6);
    printf("p50_us=%.0f\np99_us=%.0f\nmax_us=%.0f\nslowest_s=%.3f\n", percentile(0.50),
           percentile(0.99), maxlat, slowest);
    if (pid)
        printf("rss_before_kib=%ld\nrss_idle_kib=%ld\nrss_peak_kib=%ld\nfile_read_bytes=%ld\n",
               rss0, rss_idle, rss_peak, rchar1 - rchar0);
    for (size_t i = 0; i < nsess; i++) {
        iscsi_logout_sync(sess[i].iscsi);
        iscsi_destroy_context(sess[i].iscsi);
    }
    return failures ? 1 : 0;
}
