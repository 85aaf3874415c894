/* deltasync._xattr: which entries of a directory listing have any extended attribute.
 *
 * -X/-A read the attributes of every entry of both trees, every pass, and
 * almost every entry has none: the cost is one listxattr per entry.  Done
 * from Python through /proc/self/fd/N/name it doubled a no-op pass over
 * 20,000 files; here it is one system call per entry, without the GIL (the
 * lister thread runs beside the march), and Python reads only the entries
 * this names.
 *
 *   with_attrs(dfd, raw) -> list[str]
 *
 * ``raw`` is a listing record of the directory open as ``dfd``
 * (deltasync/scan.py: name_len u16 LE | name | 27 fixed bytes, kind first |
 * symlinks: target_len u16 LE | target); the result holds the names, in
 * order, whose attribute list is not empty.  Each entry is reached relative
 * to ``dfd`` without following a symlink: listxattrat(2) with
 * AT_SYMLINK_NOFOLLOW (Linux 6.13), else llistxattr on
 * /proc/self/fd/<dfd>/<name> (no symlink followed either).  An entry that
 * cannot be asked (vanished, refused) is left out: it shows as having none.
 * A malformed record raises ValueError.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/xattr.h>
#include <unistd.h>

#define FIXED_LEN 27
#ifndef AT_SYMLINK_NOFOLLOW
#define AT_SYMLINK_NOFOLLOW 0x100
#endif
#if defined(__NR_listxattrat)
#define NR_LISTXATTRAT __NR_listxattrat
#else
#define NR_LISTXATTRAT 465 /* the same number on every architecture (6.13) */
#endif

static int have_at = 1; /* cleared for good once the kernel says ENOSYS */

static ssize_t list_size(int dfd, const char *name)
{
    if (have_at) {
        long r = syscall(NR_LISTXATTRAT, dfd, name, AT_SYMLINK_NOFOLLOW, NULL, (size_t)0);
        if (r >= 0 || errno != ENOSYS)
            return (ssize_t)r;
        have_at = 0;
    }
    char path[4200];
    int n = snprintf(path, sizeof path, "/proc/self/fd/%d/%s", dfd, name);
    if (n < 0 || (size_t)n >= sizeof path) {
        errno = ENAMETOOLONG;
        return -1;
    }
    return llistxattr(path, NULL, 0);
}

static PyObject *with_attrs(PyObject *module, PyObject *args)
{
    (void)module;
    int dfd;
    Py_buffer raw;
    if (!PyArg_ParseTuple(args, "iy*:with_attrs", &dfd, &raw))
        return NULL;
    const unsigned char *p = raw.buf;
    Py_ssize_t n = raw.len;
    /* offsets of the names that have attributes; at most one per 30 bytes */
    Py_ssize_t cap = n / (2 + 1 + FIXED_LEN) + 1, found = 0;
    Py_ssize_t *hits = PyMem_RawMalloc((size_t)cap * sizeof *hits);
    char *name = PyMem_RawMalloc(65536 + 1);
    PyObject *out = NULL;
    int bad = 0;
    if (hits == NULL || name == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    Py_ssize_t pos = 0;
    while (pos < n) {
        if (n - pos < 2) { bad = 1; break; }
        Py_ssize_t nl = p[pos] | (p[pos + 1] << 8);
        if (nl == 0 || n - pos - 2 < nl + FIXED_LEN) { bad = 1; break; }
        Py_ssize_t at = pos + 2;
        unsigned kind = p[at + nl];
        pos = at + nl + FIXED_LEN;
        if (kind == 2) {
            if (n - pos < 2) { bad = 1; break; }
            Py_ssize_t tl = p[pos] | (p[pos + 1] << 8);
            if (n - pos - 2 < tl) { bad = 1; break; }
            pos += 2 + tl;
        }
        if (memchr(p + at, 0, (size_t)nl) != NULL) { bad = 1; break; }
        memcpy(name, p + at, (size_t)nl);
        name[nl] = 0;
        if (list_size(dfd, name) > 0 && found < cap)
            hits[found++] = at;
    }
    Py_END_ALLOW_THREADS
    if (bad) {
        PyErr_SetString(PyExc_ValueError, "malformed directory listing");
        goto done;
    }
    out = PyList_New(found);
    if (out == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < found; i++) {
        Py_ssize_t at = hits[i];
        Py_ssize_t nl = p[at - 2] | (p[at - 1] << 8);
        PyObject *s = PyUnicode_DecodeFSDefaultAndSize((const char *)p + at, nl);
        if (s == NULL) {
            Py_CLEAR(out);
            goto done;
        }
        PyList_SET_ITEM(out, i, s);
    }
done:
    PyMem_RawFree(hits);
    PyMem_RawFree(name);
    PyBuffer_Release(&raw);
    return out;
}

static PyMethodDef methods[] = {
    {"with_attrs", with_attrs, METH_VARARGS,
     "with_attrs(dfd, raw) -> list[str]: the names of a listing that have extended attributes"},
    {NULL, NULL, 0, NULL},
};

static PyModuleDef_Slot slots[] = {
#ifdef Py_mod_multiple_interpreters
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
    {0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "deltasync._xattr", "Which entries have extended attributes.", 0,
    methods, slots, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__xattr(void) { return PyModuleDef_Init(&moduledef); }
