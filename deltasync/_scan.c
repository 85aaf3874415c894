/* deltasync._scan: list one directory, and decode a listing, in C.
 *
 * The contract (what scan_dir returns, the byte layout of a listing, the
 * errors) is written down once, in deltasync/scan.py and docs/FORMAT.md
 * ("Directory listing records"); the pure-Python fallback there gives
 * byte-identical results, and tests/test_scan.py holds the two together.
 *
 * scan_dir works in three steps so that the slow part runs without the GIL
 * (a second thread scanning the other tree then really runs in parallel):
 *   1. without the GIL: getdents64 every name into a growable arena, lstat
 *      (fstatat AT_SYMLINK_NOFOLLOW) and readlinkat each, sort by name
 *      bytes, and write the listing and the extras into C buffers;
 *   2. with the GIL: copy those into bytes objects, build the subdirs and
 *      errors lists;
 *   3. free everything on every path, success or not.
 * Nothing is static but the module definition: per-call state lives on the
 * stack and in buffers owned by the call, so threads may scan at once.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

/* scan.py refuses a built module whose version differs (a stale in-place
 * build): bump it whenever the interface between the two changes. */
#define ABI_VERSION 4
#define RDEV_MASK ((UINT64_C(1) << 56) - 1) /* scan.py: RDEV_MASK */

enum { K_FILE = 0, K_DIR = 1, K_LINK = 2, K_SPECIAL = 3, N_KINDS = 4 };

#define FIXED_LEN 27 /* kind u8 | mode u16 | size u64 | mtime i64 | uid u32 | gid u32 */
#define EXTRA_LEN 20 /* ino u64 | dev u64 | nlink u32 */
#define N_ENTRY_FIELDS 11
#define N_SCAN_FIELDS 5

/* ------------------------------------------------------------------ */
/* Module state: the Python types and enum members handed over by scan.py. */

typedef struct {
    PyTypeObject *entry_type;  /* deltasync.model.Entry */
    PyTypeObject *scan_type;   /* deltasync.scan.DirScan */
    PyObject *kinds[N_KINDS];  /* Kind.FILE, DIR, SYMLINK, SPECIAL */
    int ascii_fast;            /* the fs encoding maps ASCII bytes to themselves */
} state_t;

static state_t *get_state(PyObject *module) { return (state_t *)PyModule_GetState(module); }

/* ------------------------------------------------------------------ */
/* Growable buffers (raw allocator: usable without the GIL). */

typedef struct {
    char *p;
    size_t len, cap;
} buf_t;

static int buf_reserve(buf_t *b, size_t more)
{
    if (b->cap - b->len >= more)
        return 0;
    if (more > SIZE_MAX - b->len)
        return -1;
    size_t need = b->len + more;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    char *p = PyMem_RawRealloc(b->p, cap);
    if (p == NULL)
        return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

static void buf_free(buf_t *b)
{
    PyMem_RawFree(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

/* One directory entry while it is being scanned. */
typedef struct {
    size_t name_off, target_off;  /* into the names / targets arenas */
    const char *name;             /* set once the names arena stops growing */
    uint64_t size, ino, dev;
    int64_t mtime;
    uint32_t uid, gid, nlink;
    size_t name_len;
    uint16_t target_len, mode;
    uint8_t kind;
    int err; /* 0: listed; > 0: errno of lstat/readlink; -1: vanished (ENOENT) */
} rec_t;

typedef struct {
    buf_t names, targets, recs, raw, extras;
    rec_t **order; /* the records sorted by name bytes */
    size_t n;      /* number of records */
    size_t count;  /* number of records in the listing (err == 0) */
    int err;       /* errno when the directory itself could not be read */
    int nomem;
} scan_t;

static void scan_free(scan_t *s)
{
    buf_free(&s->names);
    buf_free(&s->targets);
    buf_free(&s->recs);
    buf_free(&s->raw);
    buf_free(&s->extras);
    PyMem_RawFree(s->order);
    s->order = NULL;
}

static inline unsigned char *put16(unsigned char *p, uint16_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    return p + 2;
}

static inline unsigned char *put32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
    return p + 4;
}

static inline unsigned char *put64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
    return p + 8;
}

static inline uint16_t get16(const unsigned char *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

static inline uint32_t get32(const unsigned char *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static inline uint64_t get64(const unsigned char *p)
{
    return (uint64_t)get32(p) | ((uint64_t)get32(p + 4) << 32);
}

/* st_mtim as nanoseconds, saturated to the i64 range (Python's st_mtime_ns
 * is unbounded; a time past the year 2262 is clamped, in both scanners). */
static int64_t mtime_ns(const struct stat *st)
{
    int64_t sec = (int64_t)st->st_mtim.tv_sec, ns;
    if (__builtin_mul_overflow(sec, (int64_t)1000000000, &ns) ||
        __builtin_add_overflow(ns, (int64_t)st->st_mtim.tv_nsec, &ns))
        return sec < 0 ? INT64_MIN : INT64_MAX;
    return ns;
}

/* The records getdents64 fills in (the kernel's struct linux_dirent64). */
struct dirent64_rec {
    uint64_t d_ino;
    int64_t d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[];
};

#define DENTS_BUF (32 * 1024) /* what glibc's readdir uses */

static int add_name(scan_t *s, const char *nm)
{
    size_t len = strlen(nm);
    if (buf_reserve(&s->names, len + 1) < 0 || buf_reserve(&s->recs, sizeof(rec_t)) < 0)
        return -1;
    rec_t *r = (rec_t *)(s->recs.p + s->recs.len);
    memset(r, 0, sizeof *r);
    r->name_off = s->names.len;
    r->name_len = len;
    memcpy(s->names.p + s->names.len, nm, len + 1);
    s->names.len += len + 1;
    s->recs.len += sizeof(rec_t);
    s->n++;
    return 0;
}

/* Step 1a: every name of the directory (but . and ..) into s->names/s->recs.
 *
 * getdents64 reads dfd itself, from offset 0, and dfd is rewound to 0 after
 * (where os.scandir leaves it).  A duplicate, as os.scandir uses, would share
 * the same file offset anyway; going without one saves four system calls
 * per directory and cannot fail with EMFILE. */
static int list_names(int dfd, scan_t *s)
{
    char *buf = PyMem_RawMalloc(DENTS_BUF);
    if (buf == NULL) {
        s->nomem = 1;
        return -1;
    }
    int fd = dfd, rc = -1;
    (void)lseek(fd, 0, SEEK_SET); /* fails on what getdents64 refuses too */
    for (;;) {
        long got = syscall(SYS_getdents64, fd, buf, DENTS_BUF);
        if (got < 0) {
            int e = errno;
            if (e == EINTR)
                continue;
            if (e == ENOENT) /* a removed directory: POSIX (and glibc) make it the end */
                break;
            if (e == EBADF && fd == dfd && s->n == 0) {
                /* An O_PATH descriptor cannot be read; open the directory it
                 * names for reading (so an unreadable one says EACCES). */
                int fl = fcntl(dfd, F_GETFL);
                if (fl >= 0 && (fl & O_PATH)) {
                    fd = openat(dfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
                    if (fd < 0) {
                        s->err = errno;
                        fd = dfd;
                        goto out;
                    }
                    continue;
                }
            }
            s->err = e;
            goto out;
        }
        if (got == 0)
            break;
        for (long off = 0; off < got;) {
            const struct dirent64_rec *de = (const struct dirent64_rec *)(buf + off);
            off += de->d_reclen;
            const char *nm = de->d_name;
            if (nm[0] == '.' && (nm[1] == '\0' || (nm[1] == '.' && nm[2] == '\0')))
                continue;
            if (add_name(s, nm) < 0) {
                s->nomem = 1;
                goto out;
            }
        }
    }
    rc = 0;
out:
    if (fd != dfd)
        close(fd);
    else
        (void)lseek(dfd, 0, SEEK_SET);
    PyMem_RawFree(buf);
    return rc;
}

/* Step 1b: lstat (and readlink) every record, in readdir order. */
static int stat_all(int dfd, int owner, scan_t *s)
{
    rec_t *recs = (rec_t *)s->recs.p;
    char target[PATH_MAX]; /* os.readlink's limit too */
    for (size_t i = 0; i < s->n; i++) {
        rec_t *r = &recs[i];
        r->name = s->names.p + r->name_off;
        if (r->name_len > 0xFFFF) { /* cannot be encoded; no Linux file system makes one */
            r->err = ENAMETOOLONG;
            continue;
        }
        struct stat st;
        int rc;
        do /* EINTR: only network file systems; os.stat retries too (PEP 475) */
            rc = fstatat(dfd, r->name, &st, AT_SYMLINK_NOFOLLOW);
        while (rc < 0 && errno == EINTR);
        if (rc < 0) {
            r->err = errno == ENOENT ? -1 : errno;
            continue;
        }
        mode_t m = st.st_mode;
        r->kind = S_ISREG(m) ? K_FILE : S_ISDIR(m) ? K_DIR : S_ISLNK(m) ? K_LINK : K_SPECIAL;
        r->mode = (uint16_t)(m & 07777);
        /* special files: their file type and device number (what -D recreates) */
        r->size = r->kind == K_FILE ? (uint64_t)st.st_size
                : r->kind == K_SPECIAL ? ((uint64_t)(m & S_IFMT) << 44) | ((uint64_t)st.st_rdev & RDEV_MASK)
                : 0;
        r->mtime = mtime_ns(&st);
        r->uid = owner ? (uint32_t)st.st_uid : 0;
        r->gid = owner ? (uint32_t)st.st_gid : 0;
        r->ino = (uint64_t)st.st_ino;
        r->dev = (uint64_t)st.st_dev;
        r->nlink = st.st_nlink > UINT32_MAX ? UINT32_MAX : (uint32_t)st.st_nlink;
        if (r->kind == K_LINK) {
            ssize_t tl;
            do
                tl = readlinkat(dfd, r->name, target, sizeof target);
            while (tl < 0 && errno == EINTR);
            if (tl < 0) {
                r->err = errno == ENOENT ? -1 : errno;
                continue;
            }
            if (buf_reserve(&s->targets, (size_t)tl) < 0) {
                s->nomem = 1;
                return -1;
            }
            r->target_off = s->targets.len;
            r->target_len = (uint16_t)tl;
            memcpy(s->targets.p + s->targets.len, target, (size_t)tl);
            s->targets.len += (size_t)tl;
        }
    }
    return 0;
}

/* Names contain no NUL, so strcmp (which compares unsigned chars) is the
 * memcmp order of the name bytes. */
static int cmp_rec(const void *a, const void *b)
{
    return strcmp((*(rec_t *const *)a)->name, (*(rec_t *const *)b)->name);
}

/* Step 1c: sort, then write the listing and the extras. */
static int encode_all(scan_t *s)
{
    rec_t *recs = (rec_t *)s->recs.p;
    if (s->n > SIZE_MAX / sizeof(rec_t *)) {
        s->nomem = 1;
        return -1;
    }
    s->order = PyMem_RawMalloc(s->n ? s->n * sizeof(rec_t *) : 1);
    if (s->order == NULL) {
        s->nomem = 1;
        return -1;
    }
    size_t raw_len = 0;
    s->count = 0;
    for (size_t i = 0; i < s->n; i++) {
        s->order[i] = &recs[i];
        if (recs[i].err == 0) {
            raw_len += 2 + recs[i].name_len + FIXED_LEN + (recs[i].kind == K_LINK ? 2u + recs[i].target_len : 0u);
            s->count++;
        }
    }
    qsort(s->order, s->n, sizeof(rec_t *), cmp_rec);
    if (buf_reserve(&s->raw, raw_len ? raw_len : 1) < 0 ||
        buf_reserve(&s->extras, s->count ? s->count * EXTRA_LEN : 1) < 0) {
        s->nomem = 1;
        return -1;
    }
    unsigned char *p = (unsigned char *)s->raw.p, *x = (unsigned char *)s->extras.p;
    for (size_t i = 0; i < s->n; i++) {
        const rec_t *r = s->order[i];
        if (r->err != 0)
            continue;
        p = put16(p, (uint16_t)r->name_len);
        memcpy(p, r->name, r->name_len);
        p += r->name_len;
        *p++ = r->kind;
        p = put16(p, r->mode);
        p = put64(p, r->size);
        p = put64(p, (uint64_t)r->mtime);
        p = put32(p, r->uid);
        p = put32(p, r->gid);
        if (r->kind == K_LINK) {
            p = put16(p, r->target_len);
            memcpy(p, s->targets.p + r->target_off, r->target_len);
            p += r->target_len;
        }
        x = put64(x, r->ino);
        x = put64(x, r->dev);
        x = put32(x, r->nlink);
    }
    s->raw.len = raw_len;
    s->extras.len = s->count * EXTRA_LEN;
    return 0;
}

/* A new instance of a tuple subclass (Entry, DirScan) with n empty items,
 * which the caller fills with PyTuple_SET_ITEM (what tuple.__new__ does). */
static PyObject *new_tuple_of(PyTypeObject *type, Py_ssize_t n) { return type->tp_alloc(type, n); }

static PyObject *scan_dir(PyObject *module, PyObject *args)
{
    state_t *st = get_state(module);
    int dfd, owner;
    if (!PyArg_ParseTuple(args, "ip:scan_dir", &dfd, &owner))
        return NULL;
    if (st->scan_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "deltasync._scan: init() was not called");
        return NULL;
    }
    scan_t s;
    memset(&s, 0, sizeof s);
    Py_BEGIN_ALLOW_THREADS
    if (list_names(dfd, &s) == 0 && stat_all(dfd, owner, &s) == 0)
        encode_all(&s);
    Py_END_ALLOW_THREADS

    PyObject *raw = NULL, *extras = NULL, *subdirs = NULL, *errors = NULL, *count = NULL, *res = NULL;
    if (s.err) {
        errno = s.err;
        PyErr_SetFromErrno(PyExc_OSError);
        goto done;
    }
    if (s.nomem) {
        PyErr_NoMemory();
        goto done;
    }
    raw = PyBytes_FromStringAndSize(s.raw.p, (Py_ssize_t)s.raw.len);
    extras = raw ? PyBytes_FromStringAndSize(s.extras.p, (Py_ssize_t)s.extras.len) : NULL;
    subdirs = extras ? PyList_New(0) : NULL;
    errors = subdirs ? PyList_New(0) : NULL;
    count = errors ? PyLong_FromSize_t(s.count) : NULL;
    if (count == NULL)
        goto done;
    for (size_t i = 0; i < s.n; i++) {
        const rec_t *r = s.order[i];
        if (r->err < 0 || (r->err == 0 && r->kind != K_DIR))
            continue;
        PyObject *name = PyUnicode_DecodeFSDefaultAndSize(r->name, (Py_ssize_t)r->name_len);
        if (name == NULL)
            goto done;
        int rc;
        if (r->err == 0) {
            rc = PyList_Append(subdirs, name);
        } else {
            PyObject *pair = Py_BuildValue("(Oi)", name, r->err);
            rc = pair ? PyList_Append(errors, pair) : -1;
            Py_XDECREF(pair);
        }
        Py_DECREF(name);
        if (rc < 0)
            goto done;
    }
    res = new_tuple_of(st->scan_type, N_SCAN_FIELDS);
    if (res == NULL)
        goto done;
    PyTuple_SET_ITEM(res, 0, raw);
    PyTuple_SET_ITEM(res, 1, extras);
    PyTuple_SET_ITEM(res, 2, subdirs);
    PyTuple_SET_ITEM(res, 3, errors);
    PyTuple_SET_ITEM(res, 4, count);
    raw = extras = subdirs = errors = count = NULL; /* owned by res now */
done:
    Py_XDECREF(raw);
    Py_XDECREF(extras);
    Py_XDECREF(subdirs);
    Py_XDECREF(errors);
    Py_XDECREF(count);
    scan_free(&s);
    return res;
}

/* ------------------------------------------------------------------ */
/* decode */

static PyObject *malformed(const char *why, Py_ssize_t at)
{
    PyErr_Format(PyExc_ValueError, "malformed directory listing: %s at offset %zd", why, at);
    return NULL;
}

/* Walk the listing once to check it and count the entries (-1: error set).
 * The checks keep a listing from a peer from naming anything but one
 * plain entry of this directory, each once, in order. */
static Py_ssize_t check_listing(const unsigned char *p, Py_ssize_t n)
{
    Py_ssize_t pos = 0, count = 0, prev = -1, prev_len = 0;
    while (pos < n) {
        Py_ssize_t at = pos;
        if (n - pos < 2)
            return malformed("truncated entry", at), -1;
        Py_ssize_t nl = get16(p + pos);
        pos += 2;
        if (n - pos < nl + FIXED_LEN)
            return malformed("truncated entry", at), -1;
        const unsigned char *nm = p + pos;
        if (nl == 0 || (nl == 1 && nm[0] == '.') || (nl == 2 && nm[0] == '.' && nm[1] == '.') ||
            memchr(nm, '/', (size_t)nl) || memchr(nm, '\0', (size_t)nl))
            return malformed("bad name", at), -1;
        if (prev >= 0) {
            size_t m = (size_t)(prev_len < nl ? prev_len : nl);
            int c = memcmp(p + prev, nm, m);
            if (c > 0 || (c == 0 && prev_len >= nl))
                return malformed("names out of order", at), -1;
        }
        prev = pos;
        prev_len = nl;
        pos += nl;
        unsigned kind = p[pos];
        if (kind >= N_KINDS)
            return malformed("bad kind", at), -1;
        pos += FIXED_LEN;
        if (kind == K_LINK) {
            if (n - pos < 2)
                return malformed("truncated entry", at), -1;
            Py_ssize_t tl = get16(p + pos);
            pos += 2;
            if (n - pos < tl)
                return malformed("truncated entry", at), -1;
            if (memchr(p + pos, '\0', (size_t)tl))
                return malformed("bad link target", at), -1;
            pos += tl;
        }
        count++;
    }
    return count;
}

static int is_ascii(const unsigned char *p, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++)
        if (p[i] & 0x80)
            return 0;
    return 1;
}

/* An int, reusing *last when the value repeats (modes, owners and the device
 * are the same for most entries of a directory). */
static PyObject *cached_u64(uint64_t v, uint64_t *last_v, PyObject **last)
{
    if (*last != NULL && *last_v == v) {
        Py_INCREF(*last);
        return *last;
    }
    PyObject *o = PyLong_FromUnsignedLongLong(v);
    if (o == NULL)
        return NULL;
    Py_XSETREF(*last, Py_NewRef(o));
    *last_v = v;
    return o;
}

static PyObject *decode(PyObject *module, PyObject *args)
{
    state_t *st = get_state(module);
    Py_buffer raw, ex = {0};
    PyObject *exobj, *prefix;
    if (!PyArg_ParseTuple(args, "y*OU:decode", &raw, &exobj, &prefix))
        return NULL;
    PyObject *out = NULL, *last_mode = NULL, *last_uid = NULL, *last_gid = NULL, *last_dev = NULL;
    uint64_t v_mode = 0, v_uid = 0, v_gid = 0, v_dev = 0;
    int have_ex = exobj != Py_None;
    if (st->entry_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "deltasync._scan: init() was not called");
        goto fail;
    }
    if (have_ex && PyObject_GetBuffer(exobj, &ex, PyBUF_SIMPLE) < 0) {
        have_ex = 0;
        goto fail;
    }
    const unsigned char *p = raw.buf, *x = have_ex ? ex.buf : NULL;
    Py_ssize_t n = raw.len;
    Py_ssize_t count = check_listing(p, n);
    if (count < 0)
        goto fail;
    if (have_ex && ex.len != count * EXTRA_LEN) {
        PyErr_Format(PyExc_ValueError, "malformed directory listing: %zd bytes of extras for %zd entries",
                     ex.len, count);
        goto fail;
    }
    if (PyUnicode_READY(prefix) < 0)
        goto fail;
    Py_ssize_t plen = PyUnicode_GET_LENGTH(prefix);
    int prefix_ascii = st->ascii_fast && PyUnicode_IS_ASCII(prefix);
    const char *pdata = prefix_ascii ? (const char *)PyUnicode_1BYTE_DATA(prefix) : NULL;
    out = PyList_New(count);
    if (out == NULL)
        goto fail;
    Py_ssize_t pos = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t nl = get16(p + pos);
        const unsigned char *nm = p + pos + 2;
        const unsigned char *f = nm + nl;
        pos += 2 + nl + FIXED_LEN;
        unsigned kind = f[0];
        PyObject *e = new_tuple_of(st->entry_type, N_ENTRY_FIELDS);
        if (e == NULL)
            goto fail;
        /* Not tracked by the cyclic GC: an Entry holds strs, ints, None and a
         * Kind member, and no cycle can run through it.  (Tracked, a million
         * entries cost six times their decoding in collections.) */
        PyObject_GC_UnTrack(e);
        PyList_SET_ITEM(out, i, e);
        PyObject *path;
        if (prefix_ascii && is_ascii(nm, nl)) {
            path = PyUnicode_New(plen + nl, 127);
            if (path != NULL) {
                memcpy(PyUnicode_1BYTE_DATA(path), pdata, (size_t)plen);
                memcpy(PyUnicode_1BYTE_DATA(path) + plen, nm, (size_t)nl);
            }
        } else {
            PyObject *name = PyUnicode_DecodeFSDefaultAndSize((const char *)nm, nl);
            path = name && plen ? PyUnicode_Concat(prefix, name) : Py_XNewRef(name);
            Py_XDECREF(name);
        }
        if (path == NULL)
            goto fail;
        PyTuple_SET_ITEM(e, 0, path);
        PyTuple_SET_ITEM(e, 1, Py_NewRef(st->kinds[kind]));
        PyObject *o;
#define SET(idx, expr)                     \
    if ((o = (expr)) == NULL)              \
        goto fail;                         \
    PyTuple_SET_ITEM(e, idx, o)
        SET(2, PyLong_FromUnsignedLongLong(get64(f + 3)));
        SET(3, PyLong_FromLongLong((int64_t)get64(f + 11)));
        SET(4, cached_u64(get16(f + 1), &v_mode, &last_mode));
        SET(5, cached_u64(get32(f + 19), &v_uid, &last_uid));
        SET(6, cached_u64(get32(f + 23), &v_gid, &last_gid));
        if (kind == K_LINK) {
            Py_ssize_t tl = get16(p + pos);
            SET(7, PyUnicode_DecodeFSDefaultAndSize((const char *)p + pos + 2, tl));
            pos += 2 + tl;
        } else {
            PyTuple_SET_ITEM(e, 7, Py_NewRef(Py_None));
        }
        if (x != NULL) {
            const unsigned char *xe = x + i * EXTRA_LEN;
            SET(8, PyLong_FromUnsignedLongLong(get64(xe)));
            SET(9, cached_u64(get64(xe + 8), &v_dev, &last_dev));
            SET(10, PyLong_FromUnsignedLong(get32(xe + 16)));
        } else {
            SET(8, PyLong_FromLong(0));
            SET(9, PyLong_FromLong(0));
            SET(10, PyLong_FromLong(0));
        }
#undef SET
    }
    goto done;
fail:
    Py_CLEAR(out);
done:
    Py_XDECREF(last_mode);
    Py_XDECREF(last_uid);
    Py_XDECREF(last_gid);
    Py_XDECREF(last_dev);
    if (have_ex)
        PyBuffer_Release(&ex);
    PyBuffer_Release(&raw);
    return out;
}

/* ------------------------------------------------------------------ */
/* init(Entry, DirScan, kinds, ascii_fast): called once by scan.py. */

/* ------------------------------------------------------------------ */
/* The walk totals and linked share (scan.py: _fixed_parts): the offset of
   the fixed part of the entry at *pos, *pos moved past the entry; -1 when
   the entry does not lie whole inside the record. */

static Py_ssize_t next_entry(const unsigned char *p, Py_ssize_t n, Py_ssize_t *pos)
{
    Py_ssize_t at = *pos;
    if (n - at < 2)
        return -1;
    Py_ssize_t nl = get16(p + at);
    at += 2;
    if (n - at < nl + FIXED_LEN)
        return -1;
    Py_ssize_t fixed = at + nl;
    at = fixed + FIXED_LEN;
    if (p[fixed] == K_LINK) {
        if (n - at < 2)
            return -1;
        Py_ssize_t tl = get16(p + at);
        at += 2;
        if (n - at < tl)
            return -1;
        at += tl;
    }
    *pos = at;
    return fixed;
}

/* ------------------------------------------------------------------ */
/* totals: what a pass counts of a directory it does not decode */

static PyObject *totals(PyObject *module, PyObject *arg)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    const unsigned char *p = view.buf;
    Py_ssize_t n = view.len, pos = 0;
    unsigned long long files = 0, bytes = 0, bytes_hi = 0;
    while (pos < n) {
        Py_ssize_t f = next_entry(p, n, &pos);
        if (f < 0)
            goto bad;
        if (p[f] == K_FILE) {
            uint64_t size = get64(p + f + 3);
            files++;
            bytes += size;
            if (bytes < size)
                bytes_hi++;
        }
    }
    PyBuffer_Release(&view);
    if (bytes_hi == 0)
        return Py_BuildValue("(KK)", files, bytes);
    /* more than 2**64 bytes (only a peer's listing can claim that): exact anyway */
    PyObject *hi = PyLong_FromUnsignedLongLong(bytes_hi), *shift = PyLong_FromLong(64);
    PyObject *lo = PyLong_FromUnsignedLongLong(bytes), *big = NULL, *sum = NULL;
    if (hi && shift && lo && (big = PyNumber_Lshift(hi, shift)) != NULL)
        sum = PyNumber_Add(big, lo);
    Py_XDECREF(hi);
    Py_XDECREF(shift);
    Py_XDECREF(lo);
    Py_XDECREF(big);
    if (sum == NULL)
        return NULL;
    PyObject *res = Py_BuildValue("(KN)", files, sum);
    return res;
bad:
    PyBuffer_Release(&view);
    PyErr_SetString(PyExc_ValueError, "malformed directory listing: truncated entry");
    return NULL;
}

/* ------------------------------------------------------------------ */
/* linked: does a listing hold a regular file with more than one link (-H)? */

static PyObject *linked(PyObject *module, PyObject *args)
{
    PyObject *rawobj, *exobj;
    if (!PyArg_ParseTuple(args, "OO:linked", &rawobj, &exobj))
        return NULL;
    if (exobj == Py_None)
        Py_RETURN_FALSE;
    Py_buffer raw, ex;
    if (PyObject_GetBuffer(rawobj, &raw, PyBUF_SIMPLE) < 0)
        return NULL;
    if (PyObject_GetBuffer(exobj, &ex, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&raw);
        return NULL;
    }
    const unsigned char *p = raw.buf, *x = ex.buf;
    Py_ssize_t n = raw.len, pos = 0, i = 0;
    int found = 0;
    while (pos < n) {
        Py_ssize_t f = next_entry(p, n, &pos);
        if (f < 0 || (i + 1) * EXTRA_LEN > ex.len)
            goto bad;
        if (p[f] == K_FILE && get32(x + i * EXTRA_LEN + 16) > 1) {
            found = 1;
            break;
        }
        i++;
    }
    PyBuffer_Release(&raw);
    PyBuffer_Release(&ex);
    return PyBool_FromLong(found);
bad:
    PyBuffer_Release(&raw);
    PyBuffer_Release(&ex);
    PyErr_SetString(PyExc_ValueError, "malformed directory listing: truncated entry or extras");
    return NULL;
}

static int check_tuple_type(PyObject *t, const char *what)
{
    if (!PyType_Check(t) || !PyType_IsSubtype((PyTypeObject *)t, &PyTuple_Type) ||
        ((PyTypeObject *)t)->tp_basicsize != PyTuple_Type.tp_basicsize ||
        ((PyTypeObject *)t)->tp_itemsize != PyTuple_Type.tp_itemsize) {
        PyErr_Format(PyExc_TypeError, "%s must be a tuple subclass with __slots__ = ()", what);
        return -1;
    }
    return 0;
}

static PyObject *init(PyObject *module, PyObject *args)
{
    state_t *st = get_state(module);
    PyObject *entry, *scan, *kinds;
    int ascii_fast;
    if (!PyArg_ParseTuple(args, "OOO!p:init", &entry, &scan, &PyTuple_Type, &kinds, &ascii_fast))
        return NULL;
    if (check_tuple_type(entry, "Entry") < 0 || check_tuple_type(scan, "DirScan") < 0)
        return NULL;
    if (PyTuple_GET_SIZE(kinds) != N_KINDS) {
        PyErr_SetString(PyExc_TypeError, "kinds must hold 4 members");
        return NULL;
    }
    Py_XSETREF(st->entry_type, (PyTypeObject *)Py_NewRef(entry));
    Py_XSETREF(st->scan_type, (PyTypeObject *)Py_NewRef(scan));
    for (int i = 0; i < N_KINDS; i++)
        Py_XSETREF(st->kinds[i], Py_NewRef(PyTuple_GET_ITEM(kinds, i)));
    st->ascii_fast = ascii_fast;
    Py_RETURN_NONE;
}

static int mod_traverse(PyObject *m, visitproc visit, void *arg)
{
    state_t *st = get_state(m);
    Py_VISIT(st->entry_type);
    Py_VISIT(st->scan_type);
    for (int i = 0; i < N_KINDS; i++)
        Py_VISIT(st->kinds[i]);
    return 0;
}

static int mod_clear(PyObject *m)
{
    state_t *st = get_state(m);
    Py_CLEAR(st->entry_type);
    Py_CLEAR(st->scan_type);
    for (int i = 0; i < N_KINDS; i++)
        Py_CLEAR(st->kinds[i]);
    return 0;
}

static void mod_free(void *m) { mod_clear((PyObject *)m); }

static PyMethodDef methods[] = {
    {"scan_dir", scan_dir, METH_VARARGS, "scan_dir(dfd, owner) -> DirScan (see deltasync.scan)"},
    {"decode", decode, METH_VARARGS, "decode(raw, extras, prefix) -> list[Entry] (see deltasync.scan)"},
    {"totals", totals, METH_O, "totals(raw) -> (regular files, their bytes) (see deltasync.scan)"},
    {"linked", linked, METH_VARARGS, "linked(raw, extras) -> bool: a regular file with nlink > 1 (see deltasync.scan)"},
    {"init", init, METH_VARARGS, "init(Entry, DirScan, kinds, ascii_fast): called once by deltasync.scan"},
    {NULL, NULL, 0, NULL},
};

static int mod_exec(PyObject *m) { return PyModule_AddIntConstant(m, "ABI_VERSION", ABI_VERSION); }

static PyModuleDef_Slot slots[] = {
    {Py_mod_exec, mod_exec},
    {0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT,
    .m_name = "deltasync._scan",
    .m_doc = "List one directory and decode listings in C (see deltasync.scan).",
    .m_size = sizeof(state_t),
    .m_methods = methods,
    .m_slots = slots,
    .m_traverse = mod_traverse,
    .m_clear = mod_clear,
    .m_free = mod_free,
};

PyMODINIT_FUNC PyInit__scan(void) { return PyModuleDef_Init(&moduledef); }
