/* sipdialer.rtp._fastrelay: the relay's per-packet fast path, and the recorder's queue, in C.
 *
 * Owns two types and two helpers:
 *
 *   * ``RelayCore``, the C base class of ``sipdialer.rtp.relay.MediaLeg`` (below);
 *   * ``PendingPayloads``, a recorder channel's packets since its last flush: payload bytes
 *     back to back in one buffer, and per packet its length, arrival and codec, bounded in
 *     count (PENDING_PACKETS, the oldest go) and in payload bytes (PENDING_BYTES until the
 *     next take(), newcomers refused) -- the bounds and rules of
 *     ``sipdialer.rtp.recorder`` (its docstring); ``take()`` hands the flush everything
 *     at once, already G.711-decoded with the decoding tables ``configure()`` was given
 *     (``sipdialer.rtp.g711``'s), so a flush does no work per packet in Python;
 *   * ``interleave(left, right, n)``: two int16 channels into one stereo block.
 *
 * ``RelayCore``:
 * It holds the leg's hot state as C members (the same names the Python code reads and
 * writes: counters, the latched source, where to send, the outgoing stream's offsets, the
 * recorder's queue) and ``_readable()``, the callback the event loop calls when the leg's
 * socket is readable (``loop.add_reader``).
 *
 * ``_readable()`` drains the socket with ``recvmmsg`` (one system call for every datagram
 * waiting, up to a batch) and takes each datagram one of two ways:
 *
 *   * the usual case -- plain RTP (version 2, no padding, extension or CSRC) of the leg's
 *     negotiated audio payload type, from the latched source, that the recorder has room
 *     for, relayed to a peer that is sending, has no ringback playing, no outbound SRTP and
 *     already carries this SSRC -- is counted, queued for the recorder and relayed here:
 *     the header rewritten in place (PT, sequence and timestamp offsets, SSRC, marker), the
 *     payload transcoded in place through the leg's G.711 table when the codecs differ,
 *     and one ``sendto`` on the peer's socket to the peer's sockaddr (no address parsing);
 *   * everything else goes, as ``(bytes, address tuple)``, to the Python
 *     ``datagram_received`` -- the one place the rules live (latching, SRTP, DTMF, static
 *     payload types, source switches, ringback, the recorder's refusals).
 *
 * So the fast path is only ever a shortcut through the same rules: for each datagram it
 * takes, the Python path would have done exactly the same (the test suite drives both).
 *
 * Why C, not a library: no library relays RTP inside a Python process, and the Python path
 * costs ~19,000 instructions per packet through uvloop's datagram transport (address
 * tuples built and parsed per packet, a Python callback per datagram); this costs a few
 * hundred plus the two system calls. rtpengine is the yardstick (issue 14).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

/* Datagrams taken per recvmmsg call, and the most calls per readable event (a flooding
 * source yields to the other sockets after BATCH * ROUNDS datagrams). */
#define BATCH 16
#define ROUNDS 4
/* A datagram larger than this is truncated by the kernel: dropped and counted. No G.711
 * RTP packet comes near it (200 ms of audio is 1,612 bytes). */
#define SLOT 4096
/* sipdialer.rtp.recorder's MAX_PAYLOAD, PENDING_BYTES and PENDING_PACKETS (it checks) */
#define MAX_PAYLOAD 1600
#define PENDING_BYTES 32000
#define PENDING_PACKETS 512

/* -- the recorder channel's queue ------------------------------------------------------ */

enum { CODEC_PCMU = 0, CODEC_PCMA = 1, CODEC_OTHER = 2, CODEC_REFUSED = 3 };

typedef struct {
    double arrival;
    uint32_t off; /* in buf */
    uint16_t len;
    uint8_t codec;
} Item;

typedef struct {
    PyObject_HEAD
    unsigned char *buf; /* accepted payloads back to back since the last take() */
    Py_ssize_t buf_cap, used;
    Item *items;        /* a ring of at most PENDING_PACKETS */
    int items_cap, head, count;
    long room;          /* payload bytes still accepted before the next take() */
    long long oversize, overflow;
} PendingPayloads;

static PyTypeObject PendingPayloadsType;
static int16_t decode_table[2][256];
static int tables_set;

static int
codec_code(PyObject *name)
{
    if (PyUnicode_Check(name)) {
        if (PyUnicode_CompareWithASCIIString(name, "PCMU") == 0) return CODEC_PCMU;
        if (PyUnicode_CompareWithASCIIString(name, "PCMA") == 0) return CODEC_PCMA;
    }
    return CODEC_OTHER;
}

/* Room for one more item: the oldest goes once PENDING_PACKETS are held. -1: no memory. */
static Item *
next_item(PendingPayloads *q)
{
    if (q->count == PENDING_PACKETS) { /* items_cap == PENDING_PACKETS here */
        q->head = (q->head + 1) % q->items_cap;
        q->count--;
    } else if (q->count == q->items_cap) {
        int cap = q->items_cap ? q->items_cap * 2 : 64;
        if (cap > PENDING_PACKETS) cap = PENDING_PACKETS;
        Item *items = PyMem_Malloc(sizeof(Item) * (size_t)cap);
        if (items == NULL) { PyErr_NoMemory(); return NULL; }
        for (int i = 0; i < q->count; i++) items[i] = q->items[(q->head + i) % q->items_cap];
        PyMem_Free(q->items);
        q->items = items;
        q->items_cap = cap;
        q->head = 0;
    }
    Item *it = &q->items[(q->head + q->count) % q->items_cap];
    q->count++;
    return it;
}

/* Queue an accepted payload (the caller checked m <= room and m <= MAX_PAYLOAD). */
static int
queue_payload(PendingPayloads *q, const unsigned char *payload, Py_ssize_t m, int codec,
              double arrival)
{
    if (q->used + m > q->buf_cap) {
        Py_ssize_t cap = q->buf_cap ? q->buf_cap : 2048;
        while (cap < q->used + m) cap *= 2;
        if (cap > PENDING_BYTES) cap = PENDING_BYTES; /* used + m <= PENDING_BYTES */
        unsigned char *buf = PyMem_Realloc(q->buf, (size_t)cap);
        if (buf == NULL) { PyErr_NoMemory(); return -1; }
        q->buf = buf;
        q->buf_cap = cap;
    }
    Item *it = next_item(q);
    if (it == NULL) return -1;
    memcpy(q->buf + q->used, payload, (size_t)m);
    it->off = (uint32_t)q->used;
    it->len = (uint16_t)m;
    it->codec = (uint8_t)codec;
    it->arrival = arrival;
    q->used += m;
    q->room -= (long)m;
    return 0;
}

static int
queue_refused(PendingPayloads *q, Py_ssize_t m)
{
    if (m > MAX_PAYLOAD) q->oversize++;
    else q->overflow++;
    Item *it = next_item(q);
    if (it == NULL) return -1;
    it->off = 0;
    it->len = 0;
    it->codec = CODEC_REFUSED;
    it->arrival = 0.0;
    return 0;
}

static PyObject *
pp_feed(PendingPayloads *q, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "feed(payload, codec, arrival)");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) return NULL;
    double arrival = PyFloat_AsDouble(args[2]);
    int rc;
    if (arrival == -1.0 && PyErr_Occurred()) rc = -1;
    else if (view.len <= q->room && view.len <= MAX_PAYLOAD)
        rc = queue_payload(q, view.buf, view.len, codec_code(args[1]), arrival);
    else
        rc = queue_refused(q, view.len);
    PyBuffer_Release(&view);
    if (rc < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *
pp_refuse(PendingPayloads *q, PyObject *arg)
{
    Py_ssize_t m = PyLong_AsSsize_t(arg);
    if (m == -1 && PyErr_Occurred()) return NULL;
    if (queue_refused(q, m) < 0) return NULL;
    Py_RETURN_NONE;
}

static void
pp_reset(PendingPayloads *q)
{
    q->used = 0;
    q->head = 0;
    q->count = 0;
    q->room = PENDING_BYTES;
}

static PyObject *
pp_take(PendingPayloads *q, PyObject *Py_UNUSED(ignored))
{
    if (!tables_set) {
        PyErr_SetString(PyExc_RuntimeError, "_fastrelay.configure() was not called");
        return NULL;
    }
    Py_ssize_t kept = 0, samples = 0;
    for (int i = 0; i < q->count; i++) {
        const Item *it = &q->items[(q->head + i) % q->items_cap];
        if (it->len) { kept++; samples += it->len; }
    }
    if (kept == 0) {
        pp_reset(q);
        Py_RETURN_NONE;
    }
    PyObject *pcm = PyBytes_FromStringAndSize(NULL, samples * 2);
    PyObject *lengths = PyBytes_FromStringAndSize(NULL, kept * (Py_ssize_t)sizeof(int64_t));
    PyObject *arrivals = PyBytes_FromStringAndSize(NULL, kept * (Py_ssize_t)sizeof(double));
    if (pcm == NULL || lengths == NULL || arrivals == NULL) {
        Py_XDECREF(pcm);
        Py_XDECREF(lengths);
        Py_XDECREF(arrivals);
        return NULL;
    }
    int16_t *out = (int16_t *)PyBytes_AS_STRING(pcm);
    int64_t *lens = (int64_t *)PyBytes_AS_STRING(lengths);
    double *arr = (double *)PyBytes_AS_STRING(arrivals);
    Py_ssize_t k = 0;
    for (int i = 0; i < q->count; i++) {
        const Item *it = &q->items[(q->head + i) % q->items_cap];
        if (!it->len) continue;
        const unsigned char *src = q->buf + it->off;
        if (it->codec <= CODEC_PCMA) {
            const int16_t *tbl = decode_table[it->codec];
            int j = 0;
            for (; j + 4 <= it->len; j += 4) {
                out[j] = tbl[src[j]];
                out[j + 1] = tbl[src[j + 1]];
                out[j + 2] = tbl[src[j + 2]];
                out[j + 3] = tbl[src[j + 3]];
            }
            for (; j < it->len; j++) out[j] = tbl[src[j]];
        } else {
            memset(out, 0, (size_t)it->len * 2); /* not G.711: the time it covers, silent */
        }
        out += it->len;
        lens[k] = it->len;
        arr[k] = it->arrival;
        k++;
    }
    pp_reset(q);
    PyObject *result = PyTuple_Pack(3, pcm, lengths, arrivals);
    Py_DECREF(pcm);
    Py_DECREF(lengths);
    Py_DECREF(arrivals);
    return result;
}

static const char *
codec_name(int code)
{
    switch (code) {
    case CODEC_PCMU: return "PCMU";
    case CODEC_PCMA: return "PCMA";
    case CODEC_OTHER: return "?";
    default: return "";
    }
}

/* payloads, codecs or arrivals of the items held, oldest first */
static PyObject *
pp_list(PendingPayloads *q, int what)
{
    PyObject *list = PyList_New(q->count);
    if (list == NULL) return NULL;
    for (int i = 0; i < q->count; i++) {
        const Item *it = &q->items[(q->head + i) % q->items_cap];
        PyObject *v;
        if (what == 0) v = PyBytes_FromStringAndSize((const char *)q->buf + it->off, it->len);
        else if (what == 1) v = PyUnicode_FromString(codec_name(it->codec));
        else v = PyFloat_FromDouble(it->arrival);
        if (v == NULL) { Py_DECREF(list); return NULL; }
        PyList_SET_ITEM(list, i, v);
    }
    return list;
}

static PyObject *
pp_iter(PendingPayloads *q)
{
    PyObject *list = pp_list(q, 0);
    if (list == NULL) return NULL;
    PyObject *it = PyObject_GetIter(list);
    Py_DECREF(list);
    return it;
}

static Py_ssize_t
pp_len(PendingPayloads *q)
{
    return q->count;
}

static PyObject *
pp_codecs(PendingPayloads *q, void *c)
{
    return pp_list(q, 1);
}

static PyObject *
pp_arrivals(PendingPayloads *q, void *c)
{
    return pp_list(q, 2);
}

static PyObject *
pp_nbytes(PendingPayloads *q, void *c)
{
    long long n = 0;
    for (int i = 0; i < q->count; i++) n += q->items[(q->head + i) % q->items_cap].len;
    return PyLong_FromLongLong(n);
}

static PyObject *
pp_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    if (PyTuple_GET_SIZE(args) || (kwds && PyDict_GET_SIZE(kwds))) {
        PyErr_SetString(PyExc_TypeError, "PendingPayloads() takes no arguments");
        return NULL;
    }
    PendingPayloads *q = (PendingPayloads *)type->tp_alloc(type, 0);
    if (q != NULL) q->room = PENDING_BYTES;
    return (PyObject *)q;
}

static void
pp_dealloc(PendingPayloads *q)
{
    PyMem_Free(q->buf);
    PyMem_Free(q->items);
    Py_TYPE(q)->tp_free((PyObject *)q);
}

static PyMethodDef pp_methods[] = {
    {"feed", (PyCFunction)(void (*)(void))pp_feed, METH_FASTCALL,
     "feed(payload, codec, arrival): queue one payload ('PCMU'/'PCMA') or refuse it"},
    {"refuse", (PyCFunction)pp_refuse, METH_O,
     "refuse(m): count a payload of m bytes not kept (it still takes its place in the count)"},
    {"take", (PyCFunction)pp_take, METH_NOARGS,
     "Everything held, and empty the queue: None if no audio, else (int16 samples decoded "
     "back to back, int64 lengths, float64 arrivals) as bytes, one length and arrival per "
     "packet kept (refused ones left out)."},
    {NULL}
};

static PyMemberDef pp_members[] = {
    {"room", T_LONG, offsetof(PendingPayloads, room), READONLY,
     "payload bytes still accepted before the next take()"},
    {"oversize", T_LONGLONG, offsetof(PendingPayloads, oversize), READONLY,
     "packets refused for their size"},
    {"overflow", T_LONGLONG, offsetof(PendingPayloads, overflow), READONLY,
     "packets refused because the channel's buffer was full"},
    {NULL}
};

static PyGetSetDef pp_getset[] = {
    {"codecs", (getter)pp_codecs, NULL, "codec names of the packets held, oldest first", NULL},
    {"arrivals", (getter)pp_arrivals, NULL, "arrival times of the packets held", NULL},
    {"nbytes", (getter)pp_nbytes, NULL, "payload bytes held", NULL},
    {NULL}
};

static PySequenceMethods pp_as_sequence = {.sq_length = (lenfunc)pp_len};

static PyTypeObject PendingPayloadsType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "sipdialer.rtp._fastrelay.PendingPayloads",
    .tp_basicsize = sizeof(PendingPayloads),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A recorder channel's packets since its last flush, bounded (see the module).",
    .tp_new = pp_new,
    .tp_dealloc = (destructor)pp_dealloc,
    .tp_iter = (getiterfunc)pp_iter,
    .tp_as_sequence = &pp_as_sequence,
    .tp_methods = pp_methods,
    .tp_members = pp_members,
    .tp_getset = pp_getset,
};

/* configure(ulaw, alaw): the 256-entry int16 decoding tables, as bytes */
static PyObject *
mod_configure(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "configure(ulaw_table, alaw_table)");
        return NULL;
    }
    for (int t = 0; t < 2; t++) {
        Py_buffer view;
        if (PyObject_GetBuffer(args[t], &view, PyBUF_SIMPLE) < 0) return NULL;
        if (view.len != 512) {
            PyBuffer_Release(&view);
            PyErr_SetString(PyExc_ValueError, "a decoding table is 256 int16 values");
            return NULL;
        }
        memcpy(decode_table[t], view.buf, 512);
        PyBuffer_Release(&view);
    }
    tables_set = 1;
    Py_RETURN_NONE;
}

/* interleave(left, right, n[, out]): n stereo int16 frames, each channel's samples from
 * its buffer (int16), silence past its end; into ``out`` (a writable buffer of at least
 * 4n bytes, returned) or a new bytes object. Reusing ``out`` spares the recorder a fresh
 * 32 kB allocation per call-second, and the kernel the page faults that came with it. */
static PyObject *
mod_interleave(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 && nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "interleave(left, right, n[, out])");
        return NULL;
    }
    Py_ssize_t n = PyLong_AsSsize_t(args[2]);
    if (n == -1 && PyErr_Occurred()) return NULL;
    if (n < 0) {
        PyErr_SetString(PyExc_ValueError, "n must not be negative");
        return NULL;
    }
    Py_buffer a, b;
    if (PyObject_GetBuffer(args[0], &a, PyBUF_C_CONTIGUOUS) < 0) return NULL;
    if (PyObject_GetBuffer(args[1], &b, PyBUF_C_CONTIGUOUS) < 0) {
        PyBuffer_Release(&a);
        return NULL;
    }
    PyObject *out = NULL;
    int16_t *o = NULL;
    Py_buffer ob = {0};
    if (nargs == 4 && args[3] != Py_None) {
        if (PyObject_GetBuffer(args[3], &ob, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) == 0) {
            if (ob.len < n * 4) {
                PyBuffer_Release(&ob);
                PyErr_SetString(PyExc_ValueError, "out holds fewer than n frames");
            } else {
                out = Py_NewRef(args[3]);
                o = ob.buf;
            }
        }
    } else {
        out = PyBytes_FromStringAndSize(NULL, n * 4);
        if (out != NULL) o = (int16_t *)PyBytes_AS_STRING(out);
    }
    if (out != NULL) {
        const int16_t *l = a.buf, *r = b.buf;
        Py_ssize_t nl = a.len / 2 < n ? a.len / 2 : n, nr = b.len / 2 < n ? b.len / 2 : n;
        Py_ssize_t both = nl < nr ? nl : nr, i;
        for (i = 0; i < both; i++) { /* the usual case: both channels have the samples */
            o[2 * i] = l[i];
            o[2 * i + 1] = r[i];
        }
        for (; i < n; i++) {
            o[2 * i] = i < nl ? l[i] : 0;
            o[2 * i + 1] = i < nr ? r[i] : 0;
        }
    }
    if (ob.obj != NULL) PyBuffer_Release(&ob);
    PyBuffer_Release(&a);
    PyBuffer_Release(&b);
    return out;
}

static PyMethodDef module_methods[] = {
    {"configure", (PyCFunction)(void (*)(void))mod_configure, METH_FASTCALL,
     "configure(ulaw, alaw): the G.711 decoding tables (256 int16 each, as bytes) take() uses"},
    {"interleave", (PyCFunction)(void (*)(void))mod_interleave, METH_FASTCALL,
     "interleave(left, right, n[, out]): n stereo int16 frames, into out (returned) or a new "
     "bytes; past a channel's end, 0"},
    {NULL}
};

typedef struct RelayCore {
    PyObject_HEAD
    /* the leg's socket (-1: closed) */
    int fd;
    /* stats */
    long long packets_in, bytes_in, packets_out, packets_dropped, fast_packets;
    double last_rx;
    /* negotiated audio PT on this leg (-1: none), relaying on, this leg may be sent to */
    int audio_pt;
    char forward, sending;
    /* the outgoing stream (what this leg's party receives) */
    int mark;          /* 0 or 0x80: marker on the next packet sent */
    long long seq_off; /* added to the input's sequence number (mod 2^16) */
    long long ts_off;  /* added to the input's timestamp (mod 2^32) */
    long long ssrc;    /* ours */
    long long src;     /* the input SSRC feeding it (negative: none / ringback / resync) */
    long long out_seq; /* the last sequence number sent (-1: none yet) */
    long long out_ts;  /* its timestamp */
    PyObject *last_tx; /* loop time of the last packet sent (float) or None */
    /* Python objects the fast path only tests or reads */
    PyObject *rb_handle; /* ringback timer or None: the fast path leaves packets alone */
    PyObject *unprotect; /* SRTP receiver or None: SRTP packets take the Python path */
    PyObject *srtp_tx;   /* SRTP sender or None: sending to this leg encrypts, in Python */
    PyObject *rec;       /* the recorder channel's PendingPayloads or None */
    PyObject *audio_name;/* "PCMU"/"PCMA", the recorder's codec name */
    int audio_codec;     /* its CODEC_* code, set with it (not looked up per packet) */
    PyObject *xlate;     /* 256-byte G.711 table (bytes) to the peer's codec or None */
    PyObject *peer;      /* the other leg */
    PyObject *time;      /* the loop's clock (callable) */
    /* the latched source and where to send, as Python tuples and as sockaddrs */
    PyObject *source, *remote;
    struct sockaddr_storage source_sa, remote_sa;
    socklen_t source_len, remote_len; /* 0: no usable sockaddr (the fast path stays off) */
} RelayCore;

static PyTypeObject RelayCoreType;
static PyObject *str_datagram_received;

/* (host, port) or (host, port, flowinfo, scope_id) -> sockaddr; 0 if not an IP literal. */
static socklen_t
to_sockaddr(PyObject *addr, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof(*ss));
    if (addr == NULL || !PyTuple_Check(addr)) return 0;
    Py_ssize_t n = PyTuple_GET_SIZE(addr);
    if (n != 2 && n != 4) return 0;
    PyObject *host = PyTuple_GET_ITEM(addr, 0), *port = PyTuple_GET_ITEM(addr, 1);
    if (!PyUnicode_Check(host) || !PyLong_Check(port)) return 0;
    const char *h = PyUnicode_AsUTF8(host);
    if (h == NULL) { PyErr_Clear(); return 0; }
    long p = PyLong_AsLong(port);
    if (p < 0 || p > 65535) { PyErr_Clear(); return 0; }
    if (n == 2) {
        struct sockaddr_in *sin = (struct sockaddr_in *)ss;
        if (inet_pton(AF_INET, h, &sin->sin_addr) != 1) return 0;
        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)p);
        return sizeof(*sin);
    }
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET6, h, &sin6->sin6_addr) != 1) return 0;
    unsigned long flow = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(addr, 2));
    unsigned long scope = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(addr, 3));
    if (PyErr_Occurred()) { PyErr_Clear(); return 0; }
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons((uint16_t)p);
    sin6->sin6_flowinfo = htonl((uint32_t)flow);
    sin6->sin6_scope_id = (uint32_t)scope;
    return sizeof(*sin6);
}

/* The address tuple Python's socket module makes for a received datagram. */
static PyObject *
from_sockaddr(const struct sockaddr_storage *ss)
{
    char text[INET6_ADDRSTRLEN];
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &sin->sin_addr, text, sizeof(text));
        return Py_BuildValue("(si)", text, ntohs(sin->sin_port));
    }
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &sin6->sin6_addr, text, sizeof(text));
        return Py_BuildValue("(siII)", text, ntohs(sin6->sin6_port),
                             (unsigned int)ntohl(sin6->sin6_flowinfo),
                             (unsigned int)sin6->sin6_scope_id);
    }
    Py_RETURN_NONE;
}

/* The same source as the latched one (what Python's tuple comparison would say). */
static inline int
same_source(const RelayCore *self, const struct sockaddr_storage *ss)
{
    if (self->source_len == 0 || ss->ss_family != self->source_sa.ss_family) return 0;
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        const struct sockaddr_in *b = (const struct sockaddr_in *)&self->source_sa;
        return a->sin_port == b->sin_port && a->sin_addr.s_addr == b->sin_addr.s_addr;
    }
    const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
    const struct sockaddr_in6 *b = (const struct sockaddr_in6 *)&self->source_sa;
    return a->sin6_port == b->sin6_port && a->sin6_flowinfo == b->sin6_flowinfo &&
           a->sin6_scope_id == b->sin6_scope_id &&
           memcmp(&a->sin6_addr, &b->sin6_addr, sizeof(a->sin6_addr)) == 0;
}

/* -- members --------------------------------------------------------------------------- */

#define OFF(f) offsetof(RelayCore, f)
static PyMemberDef core_members[] = {
    {"_fd", T_INT, OFF(fd), 0, "the socket's descriptor (-1: closed)"},
    {"packets_in", T_LONGLONG, OFF(packets_in), 0, NULL},
    {"bytes_in", T_LONGLONG, OFF(bytes_in), 0, NULL},
    {"packets_out", T_LONGLONG, OFF(packets_out), 0, NULL},
    {"packets_dropped", T_LONGLONG, OFF(packets_dropped), 0, NULL},
    {"fast_packets", T_LONGLONG, OFF(fast_packets), 0,
     "datagrams the C fast path took (the rest went to datagram_received)"},
    {"last_rx", T_DOUBLE, OFF(last_rx), 0, NULL},
    {"_audio_pt", T_INT, OFF(audio_pt), 0, NULL},
    {"_forward", T_BOOL, OFF(forward), 0, NULL},
    {"_sending", T_BOOL, OFF(sending), 0, NULL},
    {"_mark", T_INT, OFF(mark), 0, NULL},
    {"_seq_off", T_LONGLONG, OFF(seq_off), 0, NULL},
    {"_ts_off", T_LONGLONG, OFF(ts_off), 0, NULL},
    {"_ssrc", T_LONGLONG, OFF(ssrc), 0, NULL},
    {"_src", T_LONGLONG, OFF(src), 0, NULL},
    {"_out_seq", T_LONGLONG, OFF(out_seq), 0, NULL},
    {"_out_ts", T_LONGLONG, OFF(out_ts), 0, NULL},
    {"_last_tx", T_OBJECT, OFF(last_tx), 0, NULL},
    {"_rb_handle", T_OBJECT, OFF(rb_handle), 0, NULL},
    {"_unprotect", T_OBJECT, OFF(unprotect), 0, NULL},
    {"_srtp_tx", T_OBJECT, OFF(srtp_tx), 0, NULL},
    {"_rec", T_OBJECT, OFF(rec), 0, NULL},
    {"_xlate", T_OBJECT, OFF(xlate), 0, NULL},
    {"peer", T_OBJECT, OFF(peer), 0, NULL},
    {"_time", T_OBJECT, OFF(time), 0, NULL},
    {NULL}
};

static PyObject *
get_source(RelayCore *self, void *closure)
{
    PyObject *v = self->source ? self->source : Py_None;
    return Py_NewRef(v);
}

static int
set_source(RelayCore *self, PyObject *value, void *closure)
{
    if (value == NULL) value = Py_None;
    Py_XSETREF(self->source, Py_NewRef(value));
    self->source_len = to_sockaddr(value, &self->source_sa);
    return 0;
}

static PyObject *
get_remote(RelayCore *self, void *closure)
{
    PyObject *v = self->remote ? self->remote : Py_None;
    return Py_NewRef(v);
}

static int
set_remote(RelayCore *self, PyObject *value, void *closure)
{
    if (value == NULL) value = Py_None;
    Py_XSETREF(self->remote, Py_NewRef(value));
    self->remote_len = to_sockaddr(value, &self->remote_sa);
    return 0;
}

static PyObject *
get_audio_name(RelayCore *self, void *closure)
{
    return Py_NewRef(self->audio_name ? self->audio_name : Py_None);
}

static int
set_audio_name(RelayCore *self, PyObject *value, void *closure)
{
    if (value == NULL) value = Py_None;
    Py_XSETREF(self->audio_name, Py_NewRef(value));
    self->audio_codec = codec_code(value);
    return 0;
}

static PyGetSetDef core_getset[] = {
    {"_audio_name", (getter)get_audio_name, (setter)set_audio_name,
     "the leg's codec name (\"PCMU\"/\"PCMA\") as the recorder takes it", NULL},
    {"_source", (getter)get_source, (setter)set_source,
     "the latched source (address tuple) or None", NULL},
    {"remote", (getter)get_remote, (setter)set_remote,
     "where this leg sends (address tuple) or None", NULL},
    {NULL}
};

/* -- the fast path --------------------------------------------------------------------- */

/* Take one datagram the fast way if it is the usual case. 1: done; 0: not the usual case
 * (nothing changed); -1: a Python error. */
static int
fast(RelayCore *self, unsigned char *buf, Py_ssize_t n, const struct sockaddr_storage *from,
     PyObject *now, double t)
{
    if (self->unprotect != Py_None || n < 12 || buf[0] != 0x80) return 0;
    if ((buf[1] & 0x7F) != self->audio_pt || !same_source(self, from)) return 0;
    if (!PyObject_TypeCheck(self->peer, &RelayCoreType)) return 0;
    if (self->xlate != Py_None &&
        !(PyBytes_CheckExact(self->xlate) && PyBytes_GET_SIZE(self->xlate) == 256))
        return 0;
    RelayCore *peer = (RelayCore *)self->peer;
    uint32_t ssrc = ((uint32_t)buf[8] << 24) | ((uint32_t)buf[9] << 16) |
                    ((uint32_t)buf[10] << 8) | buf[11];
    int fwd = self->forward && peer->sending;
    if (fwd && (peer->rb_handle != Py_None || peer->srtp_tx != Py_None ||
                (long long)ssrc != peer->src || peer->remote_len == 0 || peer->fd < 0))
        return 0;
    Py_ssize_t m = n - 12;
    PendingPayloads *rec = NULL;
    if (self->rec != Py_None) {
        if (Py_TYPE(self->rec) != &PendingPayloadsType) return 0;
        rec = (PendingPayloads *)self->rec;
        if (m > rec->room || m > MAX_PAYLOAD) return 0; /* refused: the Python path counts */
    }
    /* from here on the datagram is ours */
    self->packets_in++;
    self->bytes_in += n;
    self->last_rx = t;
    self->fast_packets++;
    if (rec != NULL && queue_payload(rec, buf + 12, m, self->audio_codec, t) < 0)
        return -1;
    if (!fwd) return 1;
    uint16_t seq = (uint16_t)((buf[2] << 8) | buf[3]);
    uint32_t ts = ((uint32_t)buf[4] << 24) | ((uint32_t)buf[5] << 16) |
                  ((uint32_t)buf[6] << 8) | buf[7];
    uint16_t oseq = (uint16_t)(seq + (uint16_t)peer->seq_off);
    uint32_t ots = ts + (uint32_t)peer->ts_off;
    uint32_t ossrc = (uint32_t)peer->ssrc;
    buf[1] = (unsigned char)((buf[1] & 0x80) | peer->mark | peer->audio_pt);
    buf[2] = (unsigned char)(oseq >> 8);
    buf[3] = (unsigned char)oseq;
    buf[4] = (unsigned char)(ots >> 24);
    buf[5] = (unsigned char)(ots >> 16);
    buf[6] = (unsigned char)(ots >> 8);
    buf[7] = (unsigned char)ots;
    buf[8] = (unsigned char)(ossrc >> 24);
    buf[9] = (unsigned char)(ossrc >> 16);
    buf[10] = (unsigned char)(ossrc >> 8);
    buf[11] = (unsigned char)ossrc;
    if (self->xlate != Py_None) {
        const unsigned char *tbl = (const unsigned char *)PyBytes_AS_STRING(self->xlate);
        for (Py_ssize_t i = 12; i < n; i++) buf[i] = tbl[buf[i]];
    }
    peer->mark = 0;
    peer->out_seq = oseq;
    peer->out_ts = ots;
    Py_XSETREF(peer->last_tx, Py_NewRef(now));
    if (sendto(peer->fd, buf, (size_t)n, 0, (const struct sockaddr *)&peer->remote_sa,
               peer->remote_len) < 0)
        peer->packets_dropped++; /* full socket buffer and the like: RTP is loss-tolerant */
    else
        peer->packets_out++;
    return 1;
}

static PyObject *
core_readable(RelayCore *self, PyObject *Py_UNUSED(ignored))
{
    /* on the stack, not static: another thread's loop may run while datagram_received
     * runs Python code, and the rest of this batch must survive it */
    unsigned char bufs[BATCH][SLOT];
    struct mmsghdr msgs[BATCH];
    struct iovec iovs[BATCH];
    struct sockaddr_storage addrs[BATCH];
    /* keep ourselves (and so the peer) alive while Python code may close the bridge */
    Py_INCREF(self);
    PyObject *result = NULL;
    for (int round = 0; round < ROUNDS; round++) {
        if (self->fd < 0) break;
        for (int i = 0; i < BATCH; i++) {
            iovs[i].iov_base = bufs[i];
            iovs[i].iov_len = SLOT;
            memset(&msgs[i].msg_hdr, 0, sizeof(msgs[i].msg_hdr));
            msgs[i].msg_hdr.msg_iov = &iovs[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_hdr.msg_name = &addrs[i];
            msgs[i].msg_hdr.msg_namelen = sizeof(addrs[i]);
        }
        int got = recvmmsg(self->fd, msgs, BATCH, MSG_DONTWAIT, NULL);
        if (got < 0) {
            if (errno == EINTR || errno == ECONNREFUSED || errno == EHOSTUNREACH ||
                errno == ENETUNREACH)
                continue; /* a queued ICMP error: nothing to do (error_received) */
            break;        /* EAGAIN: drained; anything else: try at the next event */
        }
        PyObject *tnow = PyObject_CallNoArgs(self->time);
        if (tnow == NULL) goto done;
        double t = PyFloat_AsDouble(tnow);
        if (t == -1.0 && PyErr_Occurred()) { Py_DECREF(tnow); goto done; }
        for (int i = 0; i < got && self->fd >= 0; i++) {
            Py_ssize_t n = (Py_ssize_t)msgs[i].msg_len;
            if (msgs[i].msg_hdr.msg_flags & MSG_TRUNC) {
                self->packets_dropped++; /* larger than any RTP packet we relay */
                continue;
            }
            int rc = fast(self, bufs[i], n, &addrs[i], tnow, t);
            if (rc < 0) { Py_DECREF(tnow); goto done; }
            if (rc > 0) continue;
            PyObject *data = PyBytes_FromStringAndSize((const char *)bufs[i], n);
            PyObject *addr = data ? from_sockaddr(&addrs[i]) : NULL;
            PyObject *res = NULL;
            if (addr != NULL) {
                PyObject *args[3] = {(PyObject *)self, data, addr};
                /* no PY_VECTORCALL_ARGUMENTS_OFFSET: args[-1] is not ours to lend */
                res = PyObject_VectorcallMethod(str_datagram_received, args, 3, NULL);
            }
            Py_XDECREF(data);
            Py_XDECREF(addr);
            if (res == NULL) { Py_DECREF(tnow); goto done; }
            Py_DECREF(res);
        }
        Py_DECREF(tnow);
        if (got < BATCH) break; /* drained */
    }
    result = Py_NewRef(Py_None);
done:
    Py_DECREF(self);
    return result;
}

static PyMethodDef core_methods[] = {
    {"_readable", (PyCFunction)core_readable, METH_NOARGS,
     "Drain the socket: the usual datagrams relayed here, the rest to datagram_received."},
    {NULL}
};

/* -- the reactor: every leg's socket behind one descriptor ------------------------------ */

/* One epoll set of leg sockets, registered with the event loop as ONE reader: a wake-up
 * takes every ready leg in one epoll_wait and drains each in C, instead of one loop
 * callback per ready socket (uvloop's per-handle dispatch was 11 % of the relay's CPU at
 * 1,200 recorded calls). Level-triggered: a leg not drained (its batch cap) is ready
 * again at the next wake-up. A registered leg is referenced until removed. */
typedef struct {
    PyObject_HEAD
    int epfd;
    Py_ssize_t legs;
} Reactor;

#define READY_MAX 256

static PyObject *
reactor_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    if (PyTuple_GET_SIZE(args) || (kwds && PyDict_GET_SIZE(kwds))) {
        PyErr_SetString(PyExc_TypeError, "Reactor() takes no arguments");
        return NULL;
    }
    int fd = epoll_create1(EPOLL_CLOEXEC);
    if (fd < 0) return PyErr_SetFromErrno(PyExc_OSError);
    Reactor *r = (Reactor *)type->tp_alloc(type, 0);
    if (r == NULL) {
        close(fd);
        return NULL;
    }
    r->epfd = fd;
    return (PyObject *)r;
}

static PyObject *
reactor_add(Reactor *r, PyObject *leg)
{
    if (!PyObject_TypeCheck(leg, &RelayCoreType)) {
        PyErr_SetString(PyExc_TypeError, "add() takes a relay leg");
        return NULL;
    }
    RelayCore *c = (RelayCore *)leg;
    if (r->epfd < 0 || c->fd < 0) {
        PyErr_SetString(PyExc_ValueError, "closed reactor or leg");
        return NULL;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = leg};
    if (epoll_ctl(r->epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0) return PyErr_SetFromErrno(PyExc_OSError);
    Py_INCREF(leg);
    r->legs++;
    Py_RETURN_NONE;
}

/* remove(leg): before the leg's socket is closed. False if it was not registered. */
static PyObject *
reactor_remove(Reactor *r, PyObject *leg)
{
    if (!PyObject_TypeCheck(leg, &RelayCoreType)) {
        PyErr_SetString(PyExc_TypeError, "remove() takes a relay leg");
        return NULL;
    }
    RelayCore *c = (RelayCore *)leg;
    if (r->epfd < 0 || c->fd < 0 || epoll_ctl(r->epfd, EPOLL_CTL_DEL, c->fd, NULL) < 0)
        Py_RETURN_FALSE;
    r->legs--;
    Py_DECREF(leg);
    Py_RETURN_TRUE;
}

/* The loop's reader callback for the epoll descriptor. */
static PyObject *
reactor_run(Reactor *r, PyObject *Py_UNUSED(ignored))
{
    struct epoll_event events[READY_MAX];
    if (r->epfd < 0) Py_RETURN_NONE;
    int n = epoll_wait(r->epfd, events, READY_MAX, 0);
    if (n < 0) {
        if (errno == EINTR) Py_RETURN_NONE;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    /* Python run for one leg may close others (a bridge ends): keep them alive, and let
     * _readable() see their descriptor gone */
    Py_INCREF(r);
    for (int i = 0; i < n; i++) Py_INCREF((PyObject *)events[i].data.ptr);
    PyObject *result = Py_None;
    for (int i = 0; i < n; i++) {
        PyObject *res = core_readable((RelayCore *)events[i].data.ptr, NULL);
        if (res == NULL) {
            result = NULL; /* the loop reports it; the other ready legs wait a wake-up */
            break;
        }
        Py_DECREF(res);
    }
    for (int i = 0; i < n; i++) Py_DECREF((PyObject *)events[i].data.ptr);
    Py_DECREF(r);
    return result == NULL ? NULL : Py_NewRef(Py_None);
}

static PyObject *
reactor_fileno(Reactor *r, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromLong(r->epfd);
}

static PyObject *
reactor_close(Reactor *r, PyObject *Py_UNUSED(ignored))
{
    if (r->epfd >= 0) {
        close(r->epfd);
        r->epfd = -1;
    }
    Py_RETURN_NONE;
}

static PyObject *
reactor_len(Reactor *r, void *c)
{
    return PyLong_FromSsize_t(r->legs);
}

static void
reactor_dealloc(Reactor *r)
{
    /* legs still registered hold no pointer to us: nothing to release but the set */
    if (r->epfd >= 0) close(r->epfd);
    Py_TYPE(r)->tp_free((PyObject *)r);
}

static PyMethodDef reactor_methods[] = {
    {"add", (PyCFunction)reactor_add, METH_O, "add(leg): watch the leg's socket"},
    {"remove", (PyCFunction)reactor_remove, METH_O,
     "remove(leg): stop watching it (before its socket closes); False if not watched"},
    {"run", (PyCFunction)reactor_run, METH_NOARGS,
     "The event loop's reader callback: drain every ready leg."},
    {"fileno", (PyCFunction)reactor_fileno, METH_NOARGS, "the epoll descriptor"},
    {"close", (PyCFunction)reactor_close, METH_NOARGS, "close the epoll descriptor"},
    {NULL}
};

static PyGetSetDef reactor_getset[] = {
    {"legs", (getter)reactor_len, NULL, "legs watched", NULL},
    {NULL}
};

static PyTypeObject ReactorType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "sipdialer.rtp._fastrelay.Reactor",
    .tp_basicsize = sizeof(Reactor),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Relay legs' sockets behind one epoll descriptor (one loop reader for all).",
    .tp_new = reactor_new,
    .tp_dealloc = (destructor)reactor_dealloc,
    .tp_methods = reactor_methods,
    .tp_getset = reactor_getset,
};

/* -- object life ----------------------------------------------------------------------- */

static PyObject *
core_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    RelayCore *self = (RelayCore *)type->tp_alloc(type, 0);
    if (self == NULL) return NULL;
    self->fd = -1;
    self->audio_pt = -1;
    self->src = -2;
    self->out_seq = -1;
    self->last_tx = Py_NewRef(Py_None);
    self->rb_handle = Py_NewRef(Py_None);
    self->unprotect = Py_NewRef(Py_None);
    self->srtp_tx = Py_NewRef(Py_None);
    self->rec = Py_NewRef(Py_None);
    self->audio_name = Py_NewRef(Py_None);
    self->audio_codec = CODEC_OTHER;
    self->xlate = Py_NewRef(Py_None);
    self->peer = Py_NewRef((PyObject *)self);
    self->time = Py_NewRef(Py_None);
    self->source = Py_NewRef(Py_None);
    self->remote = Py_NewRef(Py_None);
    return (PyObject *)self;
}

static int
core_traverse(RelayCore *self, visitproc visit, void *arg)
{
    Py_VISIT(self->last_tx);
    Py_VISIT(self->rb_handle);
    Py_VISIT(self->unprotect);
    Py_VISIT(self->srtp_tx);
    Py_VISIT(self->rec);
    Py_VISIT(self->audio_name);
    Py_VISIT(self->xlate);
    Py_VISIT(self->peer);
    Py_VISIT(self->time);
    Py_VISIT(self->source);
    Py_VISIT(self->remote);
    return 0;
}

static int
core_clear(RelayCore *self)
{
    Py_CLEAR(self->last_tx);
    Py_CLEAR(self->rb_handle);
    Py_CLEAR(self->unprotect);
    Py_CLEAR(self->srtp_tx);
    Py_CLEAR(self->rec);
    Py_CLEAR(self->audio_name);
    Py_CLEAR(self->xlate);
    Py_CLEAR(self->peer);
    Py_CLEAR(self->time);
    Py_CLEAR(self->source);
    Py_CLEAR(self->remote);
    return 0;
}

/* A static type: a heap subclass's dealloc (MediaLeg's) drops the type's reference. */
static void
core_dealloc(RelayCore *self)
{
    PyObject_GC_UnTrack(self);
    core_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject RelayCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "sipdialer.rtp._fastrelay.RelayCore",
    .tp_basicsize = sizeof(RelayCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The hot state of one relay leg and its fast path (the base of MediaLeg).",
    .tp_new = core_new,
    .tp_traverse = (traverseproc)core_traverse,
    .tp_clear = (inquiry)core_clear,
    .tp_dealloc = (destructor)core_dealloc,
    .tp_members = core_members,
    .tp_getset = core_getset,
    .tp_methods = core_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "sipdialer.rtp._fastrelay",
    .m_doc = "The relay's per-packet fast path (see the comment at the top of the C file).",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC
PyInit__fastrelay(void)
{
    str_datagram_received = PyUnicode_InternFromString("datagram_received");
    if (!str_datagram_received) return NULL;
    if (PyType_Ready(&RelayCoreType) < 0 || PyType_Ready(&PendingPayloadsType) < 0 ||
        PyType_Ready(&ReactorType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "RelayCore", (PyObject *)&RelayCoreType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddObjectRef(m, "PendingPayloads", (PyObject *)&PendingPayloadsType) < 0 ||
        PyModule_AddObjectRef(m, "Reactor", (PyObject *)&ReactorType) < 0 ||
        PyModule_AddIntConstant(m, "BATCH", BATCH) < 0 ||
        PyModule_AddIntConstant(m, "SLOT", SLOT) < 0 ||
        PyModule_AddIntConstant(m, "MAX_PAYLOAD", MAX_PAYLOAD) < 0 ||
        PyModule_AddIntConstant(m, "PENDING_BYTES", PENDING_BYTES) < 0 ||
        PyModule_AddIntConstant(m, "PENDING_PACKETS", PENDING_PACKETS) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
