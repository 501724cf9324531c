/* sipdialer.rtp._fastrelay: the relay's per-packet fast path, in C.
 *
 * Owns one thing: ``RelayCore``, the C base class of ``sipdialer.rtp.relay.MediaLeg``.
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
#include <sys/socket.h>

/* Datagrams taken per recvmmsg call, and the most calls per readable event (a flooding
 * source yields to the other sockets after BATCH * ROUNDS datagrams). */
#define BATCH 16
#define ROUNDS 4
/* A datagram larger than this is truncated by the kernel: dropped and counted. No G.711
 * RTP packet comes near it (200 ms of audio is 1,612 bytes). */
#define SLOT 4096
/* sipdialer.rtp.recorder.MAX_PAYLOAD */
#define MAX_PAYLOAD 1600

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
    PyObject *xlate;     /* 256-byte G.711 table (bytes) to the peer's codec or None */
    PyObject *peer;      /* the other leg */
    PyObject *time;      /* the loop's clock (callable) */
    /* the latched source and where to send, as Python tuples and as sockaddrs */
    PyObject *source, *remote;
    struct sockaddr_storage source_sa, remote_sa;
    socklen_t source_len, remote_len; /* 0: no usable sockaddr (the fast path stays off) */
} RelayCore;

static PyTypeObject RelayCoreType;
static PyObject *str_room, *str_push_name, *str_datagram_received;

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
    {"_audio_name", T_OBJECT, OFF(audio_name), 0, NULL},
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

static PyGetSetDef core_getset[] = {
    {"_source", (getter)get_source, (setter)set_source,
     "the latched source (address tuple) or None", NULL},
    {"remote", (getter)get_remote, (setter)set_remote,
     "where this leg sends (address tuple) or None", NULL},
    {NULL}
};

/* -- the fast path --------------------------------------------------------------------- */

/* Queue a payload for the recorder: PendingPayloads.feed's accepted branch. 0 or -1. */
static int
record(RelayCore *self, const unsigned char *payload, Py_ssize_t m, PyObject *now, long room)
{
    PyObject *rec = self->rec;
    PyObject *r = PyLong_FromLong(room - (long)m);
    if (r == NULL) return -1;
    int rc = PyObject_SetAttr(rec, str_room, r);
    Py_DECREF(r);
    if (rc < 0) return -1;
    PyObject *data = PyBytes_FromStringAndSize((const char *)payload, m);
    if (data == NULL) return -1;
    PyObject *item = PyTuple_Pack(3, data, now, self->audio_name);
    Py_DECREF(data);
    if (item == NULL) return -1;
    PyObject *push = PyObject_GetAttr(rec, str_push_name);
    if (push == NULL) { Py_DECREF(item); return -1; }
    PyObject *res = PyObject_CallOneArg(push, item);
    Py_DECREF(push);
    Py_DECREF(item);
    if (res == NULL) return -1;
    Py_DECREF(res);
    return 0;
}

/* The recorder's room, or -1 if it cannot take ``m`` bytes (the Python path refuses it). */
static long
room_for(RelayCore *self, Py_ssize_t m)
{
    PyObject *r = PyObject_GetAttr(self->rec, str_room);
    if (r == NULL) { PyErr_Clear(); return -1; }
    long room = PyLong_AsLong(r);
    Py_DECREF(r);
    if (room == -1 && PyErr_Occurred()) { PyErr_Clear(); return -1; }
    if (m > room || m > MAX_PAYLOAD) return -1;
    return room;
}

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
    long room = 0;
    Py_ssize_t m = n - 12;
    int recording = self->rec != Py_None;
    if (recording && (room = room_for(self, m)) < 0) return 0;
    /* from here on the datagram is ours */
    self->packets_in++;
    self->bytes_in += n;
    self->last_rx = t;
    self->fast_packets++;
    if (recording && record(self, buf + 12, m, now, room) < 0) return -1;
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
                res = PyObject_VectorcallMethod(
                    str_datagram_received, args, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
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
};

PyMODINIT_FUNC
PyInit__fastrelay(void)
{
    str_room = PyUnicode_InternFromString("room");
    str_push_name = PyUnicode_InternFromString("push");
    str_datagram_received = PyUnicode_InternFromString("datagram_received");
    if (!str_room || !str_push_name || !str_datagram_received) return NULL;
    if (PyType_Ready(&RelayCoreType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "RelayCore", (PyObject *)&RelayCoreType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "BATCH", BATCH) < 0 ||
        PyModule_AddIntConstant(m, "SLOT", SLOT) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
