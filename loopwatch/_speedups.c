/* loopwatch._speedups: the two paths that run for every task, compiled.
 *
 * - FastCreateTask: a watched loop's create_task for the common case (what
 *   loopwatch._loops._fast_path builds in Python): make the task, give it its
 *   record (id, name, creation stack, creation time, parent).
 * - install_finalizer: the history finalizer of a watcher's task class (what
 *   loopwatch._records.task_class builds in Python as __del__): when a task is
 *   released, its raw record goes to the watcher's history.
 *
 * Both do exactly what their Python versions do, which stay the reference (and
 * the fallback where this module was not built: LOOPWATCH_NO_SPEEDUPS=1 at build
 * or at import time). A record is made of what the Python versions store: the
 * same counter for ids, the same clock, raw stacks of (code, f_lasti) pairs.
 * Nothing here may break the program: an error while recording is swallowed, and
 * the task is made and finalized as without loopwatch.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <frameobject.h>
#include <structmember.h>
#include <time.h>

#if PY_VERSION_HEX < 0x030A0000
#error "loopwatch needs Python 3.10 or later"
#endif

#ifdef Py_T_OBJECT_EX
#define LW_T_OBJECT_EX Py_T_OBJECT_EX
#else
#define LW_T_OBJECT_EX T_OBJECT_EX
#endif

/* ------------------------------------------------------------------------ */
/* Module state (single-phase init: one interpreter)                        */

/* Offsets of WatchedTask's record slots, read from its member descriptors. */
static Py_ssize_t off_id = -1, off_stack, off_created, off_parent, off_name;
static PyTypeObject *watched_task_type;   /* loopwatch._records.WatchedTask */
static PyObject *coro_name_fn;             /* loopwatch._records.coro_name */
static PyObject *exc_text_fn;              /* loopwatch._records._exc_text */
static PyObject *monotonic_fn;             /* time.monotonic (off Linux) */
static PyObject *ids_counter;              /* loopwatch._records._ids */

static PyObject *s_exception, *s_cancelled, *s_coro, *s_cr_code, *s_lw_sink,
    *s_call_soon, *s_forget, *s_name, *s_context, *s_loop, *s_FINISHED, *s_CANCELLED,
    *s_PENDING, *s_lw_id, *kw_loop_name, *kw_loop_name_context, *empty_tuple, *zero;

/* After an error while recording: clear it and return 0 when it is loopwatch's to
 * swallow; leave it set and return -1 when it is the program's (KeyboardInterrupt or
 * SystemExit from a signal handler that ran inside code called from here), which the
 * Python versions, catching only Exception, would let through. */
static int
swallow(void)
{
    if (PyErr_ExceptionMatches(PyExc_KeyboardInterrupt)
            || PyErr_ExceptionMatches(PyExc_SystemExit)) {
        return -1;
    }
    PyErr_Clear();
    return 0;
}

#define SLOT(obj, off) (*(PyObject **)((char *)(obj) + (off)))

/* Store a new reference in a slot. */
static inline void
slot_put(PyObject *obj, Py_ssize_t off, PyObject *value)
{
    PyObject *old = SLOT(obj, off);
    SLOT(obj, off) = value;
    Py_XDECREF(old);
}

static PyObject *
monotonic(void)
{
#if defined(__linux__) && defined(CLOCK_MONOTONIC)
    /* time.monotonic() on Linux: the same clock, converted the same way. */
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) == 0) {
        long long t = (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
        return PyFloat_FromDouble((double)t / 1e9);
    }
#endif
    return PyObject_CallNoArgs(monotonic_fn);
}

static inline int
frame_lasti(PyFrameObject *f)
{
#if PY_VERSION_HEX >= 0x030B0000
    return PyFrame_GetLasti(f);
#else
    return f->f_lasti < 0 ? -1 : f->f_lasti * (int)sizeof(_Py_CODEUNIT);
#endif
}

/* Whether the frame runs the coroutine `coro` (borrowed). */
static inline int
frame_runs(PyFrameObject *f, PyObject *coro)
{
#if PY_VERSION_HEX >= 0x030B0000
    PyObject *gen = PyFrame_GetGenerator(f);
    Py_XDECREF(gen);  /* (only compared, never used) */
    return gen == coro;
#else
    return f->f_gen == coro;
#endif
}

static int
slot_offset(PyObject *type, const char *name, Py_ssize_t *out)
{
    PyObject *d = PyObject_GetAttrString(type, name);
    if (d == NULL) {
        return -1;
    }
    if (!Py_IS_TYPE(d, &PyMemberDescr_Type)
            || ((PyMemberDescrObject *)d)->d_member->type != LW_T_OBJECT_EX) {
        Py_DECREF(d);
        PyErr_Format(PyExc_TypeError, "%s is not an object slot", name);
        return -1;
    }
    *out = ((PyMemberDescrObject *)d)->d_member->offset;
    Py_DECREF(d);
    return 0;
}

/* configure(WatchedTask, ids, coro_name, exc_text, monotonic) */
static PyObject *
configure(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5 || !PyType_Check(args[0]) || !PyIter_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError,
                        "configure(task_type, ids, coro_name, exc_text, monotonic)");
        return NULL;
    }
    PyObject *type = args[0];
    if (slot_offset(type, "_lw_id", &off_id) < 0
            || slot_offset(type, "_lw_stack", &off_stack) < 0
            || slot_offset(type, "_lw_created", &off_created) < 0
            || slot_offset(type, "_lw_parent", &off_parent) < 0
            || slot_offset(type, "_lw_name", &off_name) < 0) {
        off_id = -1;
        return NULL;
    }
    Py_XSETREF(watched_task_type, (PyTypeObject *)Py_NewRef(type));
    Py_XSETREF(ids_counter, Py_NewRef(args[1]));
    Py_XSETREF(coro_name_fn, Py_NewRef(args[2]));
    Py_XSETREF(exc_text_fn, Py_NewRef(args[3]));
    Py_XSETREF(monotonic_fn, Py_NewRef(args[4]));
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------------ */
/* The history finalizer                                                    */

static void lw_finalize(PyObject *self);

/* The finalizer's record of a task, passed to the class's _lw_sink. Errors are
 * left set for the caller to clear. */
static void
record_finished(PyObject *self, PyObject *sink)
{
    PyObject *state, *exc, *coro, *code = NULL, *text = NULL, *raw;

    /* One method call in the common case, as in the Python version. */
    exc = PyObject_CallMethodNoArgs(self, s_exception);
    if (exc != NULL) {
        state = s_FINISHED;
    }
    else {  /* CancelledError, or InvalidStateError: still pending */
        if (swallow() < 0) {
            return;
        }
        PyObject *c = PyObject_CallMethodNoArgs(self, s_cancelled);
        if (c == NULL) {
            return;
        }
        state = Py_IsTrue(c) ? s_CANCELLED : s_PENDING;
        Py_DECREF(c);
        exc = Py_NewRef(Py_None);
    }
    /* The code, never the coroutine (see the Python version). */
    coro = PyObject_GetAttr(self, s_coro);
    if (coro == NULL) {
        if (swallow() < 0) {
            Py_DECREF(exc);
            return;
        }
        coro = Py_NewRef(Py_None);
    }
    if (coro != Py_None) {
        code = PyObject_GetAttr(coro, s_cr_code);
        if (code == NULL && swallow() < 0) {
            Py_DECREF(coro);
            Py_DECREF(exc);
            return;
        }
        if (code == NULL || code == Py_None) {  /* not a native coroutine: its name */
            Py_XDECREF(code);
            code = PyObject_CallOneArg(coro_name_fn, coro);
        }
    }
    else {
        code = Py_NewRef(Py_None);
    }
    Py_DECREF(coro);
    if (code == NULL) {
        Py_DECREF(exc);
        return;
    }
    text = exc == Py_None ? Py_NewRef(Py_None) : PyObject_CallOneArg(exc_text_fn, exc);
    Py_DECREF(exc);
    if (text == NULL) {
        Py_DECREF(code);
        return;
    }
    PyObject *id = SLOT(self, off_id), *stack = SLOT(self, off_stack),
        *created = SLOT(self, off_created), *parent = SLOT(self, off_parent),
        *name = SLOT(self, off_name);
    raw = PyTuple_Pack(8, id ? id : Py_None, stack ? stack : empty_tuple,
                       created ? created : Py_None, parent ? parent : zero,
                       name ? name : Py_None, state, code, text);
    Py_DECREF(code);
    Py_DECREF(text);
    if (raw == NULL) {
        return;
    }
    PyObject *r = PyObject_CallOneArg(sink, raw);
    Py_DECREF(raw);
    Py_XDECREF(r);
}

static void
lw_finalize(PyObject *self)
{
    PyTypeObject *type = Py_TYPE(self);
    PyTypeObject *base = type->tp_base;
    while (base != NULL && base->tp_finalize == lw_finalize) {
        base = base->tp_base;
    }
#if PY_VERSION_HEX >= 0x030C0000
    PyObject *saved = PyErr_GetRaisedException();
#else
    PyObject *saved_type, *saved_value, *saved_tb;
    PyErr_Fetch(&saved_type, &saved_value, &saved_tb);
#endif
    /* asyncio's own finalizer: "Task was destroyed but it is pending!" and
     * "exception was never retrieved". */
    if (base != NULL && base->tp_finalize != NULL) {
        base->tp_finalize(self);
    }
    PyObject *dict = type->tp_dict;
    PyObject *sink = dict != NULL ? PyDict_GetItemWithError(dict, s_lw_sink) : NULL;
    if (sink != NULL && SLOT(self, off_id) != NULL) {
        Py_INCREF(sink);
        record_finished(self, sink);
        Py_DECREF(sink);
    }
    /* Never let loopwatch break a finalizer; what is the program's is reported as an
     * exception in a __del__ would be. */
    if (PyErr_Occurred() && swallow() < 0) {
        PyErr_WriteUnraisable(self);
    }
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(saved);
#else
    PyErr_Restore(saved_type, saved_value, saved_tb);
#endif
}

/* install_finalizer(cls, sink): tasks of `cls` (a subclass of WatchedTask made for
 * one watcher, with no __del__ of its own) leave their record with sink(raw). */
static PyObject *
install_finalizer(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (off_id < 0) {
        PyErr_SetString(PyExc_RuntimeError, "loopwatch._speedups is not configured");
        return NULL;
    }
    if (nargs != 2 || !PyType_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "install_finalizer(cls, sink)");
        return NULL;
    }
    PyTypeObject *cls = (PyTypeObject *)args[0];
    if (!(cls->tp_flags & Py_TPFLAGS_HEAPTYPE)
            || !PyType_IsSubtype(cls, watched_task_type) || cls == watched_task_type) {
        PyErr_SetString(PyExc_TypeError, "cls must be a subclass of WatchedTask");
        return NULL;
    }
    if (PyObject_SetAttr((PyObject *)cls, s_lw_sink, args[1]) < 0) {
        return NULL;
    }
    cls->tp_finalize = lw_finalize;
    PyType_Modified(cls);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------------ */
/* FastCreateTask                                                           */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *loop;
    PyObject *task_class;
    PyObject *slow;          /* (loop, coro, **kwargs) -> task: the base loop's path */
    PyObject *current_task;
    PyObject *stop_code;     /* a creation stack stops at the loop's Handle._run */
    PyObject *skip_files;    /* frozenset: filenames of asyncio's create_task plumbing */
    Py_ssize_t depth;
    PyObject *last_frame;    /* the frame of the last capture, until the next turn */
    int last_lasti;
    PyObject *last_stack;
    /* the address of the frame of the last capture that was not kept: only compared,
     * never dereferenced (a frame that makes one task keeps nothing, schedules
     * nothing; the second task of a frame starts the cache) */
    void *hint;
} FastCreate;

static PyTypeObject FastCreate_Type;

/* The raw creation stack from frame `f` (a new reference, taken), stopping at
 * the frame that runs `top` (the creating task's coroutine, borrowed, or NULL). */
static PyObject *
walk(FastCreate *self, PyFrameObject *f, PyObject *top)
{
    PyObject *out = PyList_New(0);
    if (out == NULL) {
        Py_DECREF(f);
        return NULL;
    }
    Py_ssize_t n = self->depth;
    while (f != NULL && n > 0) {
        PyCodeObject *code = PyFrame_GetCode(f);
        if ((PyObject *)code == self->stop_code) {
            Py_DECREF(code);
            break;
        }
        PyObject *lasti = PyLong_FromLong(frame_lasti(f));
        if (lasti == NULL || PyList_Append(out, (PyObject *)code) < 0
                || PyList_Append(out, lasti) < 0) {
            Py_DECREF(code);
            Py_XDECREF(lasti);
            Py_DECREF(f);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(code);
        Py_DECREF(lasti);
        if (top != NULL && frame_runs(f, top)) {
            break;
        }
        PyFrameObject *back = PyFrame_GetBack(f);
        Py_DECREF(f);
        f = back;
        n--;
    }
    Py_XDECREF(f);
    PyObject *stack = PyList_AsTuple(out);
    Py_DECREF(out);
    return stack;
}

/* The creation stack of a task made now (a new reference; NULL with an error). */
static PyObject *
capture(FastCreate *self, PyObject *parent)
{
    PyFrameObject *f = PyEval_GetFrame();
    if (f == NULL) {
        return Py_NewRef(empty_tuple);
    }
    Py_INCREF(f);
    /* Skip asyncio's own create_task plumbing (asyncio.create_task, ensure_future,
     * TaskGroup.create_task). */
    for (;;) {
        PyCodeObject *code = PyFrame_GetCode(f);
        int skip = (PyObject *)code != self->stop_code
                   && PySet_Contains(self->skip_files, code->co_filename) == 1;
        Py_DECREF(code);
        if (!skip) {
            break;
        }
        PyFrameObject *back = PyFrame_GetBack(f);
        Py_DECREF(f);
        if (back == NULL) {
            return Py_NewRef(empty_tuple);
        }
        f = back;
    }
    int lasti = frame_lasti(f);
    /* A frame still at the instruction of the last capture has the same callers at
     * the same lines: the same stack (see _loops._fast_path). */
    if ((PyObject *)f == self->last_frame && lasti == self->last_lasti) {
        Py_DECREF(f);
        return Py_NewRef(self->last_stack);
    }
    PyObject *top = NULL;
    if (parent != Py_None) {
        top = PyObject_GetAttr(parent, s_coro);
        if (top == NULL && swallow() < 0) {
            Py_DECREF(f);
            return NULL;
        }
    }
    Py_INCREF(f);  /* (kept as last_frame below) */
    PyObject *stack = walk(self, f, top);
    Py_XDECREF(top);
    if (stack == NULL) {
        Py_DECREF(f);
        return NULL;
    }
    if (self->last_frame == NULL) {
        if ((void *)f != self->hint) {
            /* A frame's first task: nothing kept, so nothing to let go of later (a
             * loop per test, or a program that makes a task here and there, would
             * otherwise pay for one more callback for each task). */
            self->hint = (void *)f;
            Py_DECREF(f);
            return stack;
        }
        /* The frame is let go at the next turn of the loop. (The bound method is made
         * here, not kept: kept, it would make a reference cycle of this object, which
         * only the garbage collector could free, with the loop it holds.) */
        PyObject *forget = PyObject_GetAttr((PyObject *)self, s_forget);
        PyObject *r = forget == NULL ? NULL
                      : PyObject_CallMethodOneArg(self->loop, s_call_soon, forget);
        Py_XDECREF(forget);
        if (r == NULL) {
            Py_DECREF(f);
            Py_DECREF(stack);
            return NULL;
        }
        Py_DECREF(r);
    }
    Py_XSETREF(self->last_frame, (PyObject *)f);
    self->last_lasti = lasti;
    Py_XSETREF(self->last_stack, Py_NewRef(stack));
    return stack;
}

static PyObject *
FastCreate_vectorcall(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    FastCreate *self = (FastCreate *)op;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *name = Py_None, *context = Py_None;
    if (nargs != 2) {  /* (loop, coro): anything else, the base path says what is wrong */
        return PyObject_Vectorcall(self->slow, args, nargsf, kwnames);
    }
    if (kwnames != NULL) {
        Py_ssize_t nkw = PyTuple_GET_SIZE(kwnames);
        for (Py_ssize_t i = 0; i < nkw; i++) {
            PyObject *key = PyTuple_GET_ITEM(kwnames, i);
            if (key == s_name || PyUnicode_Compare(key, s_name) == 0) {
                name = args[nargs + i];
            }
            else if (key == s_context || PyUnicode_Compare(key, s_context) == 0) {
                context = args[nargs + i];
            }
            else if (args[nargs + i] == Py_None
                     && PyUnicode_CompareWithASCIIString(key, "eager_start") == 0) {
                /* (uvloop passes eager_start=None to a task factory: the default) */
            }
            else {  /* eager_start and the like: the base loop's path */
                return PyObject_Vectorcall(self->slow, args, nargsf, kwnames);
            }
        }
    }
    PyObject *targs[4] = {args[1], self->loop, name, context};
    PyObject *task = PyObject_Vectorcall(
        self->task_class, targs, 1,
        context == Py_None ? kw_loop_name : kw_loop_name_context);
    if (task == NULL) {
        return NULL;
    }
    if (!PyObject_TypeCheck(task, watched_task_type)) {
        return task;  /* (cannot happen with a watcher's task class) */
    }

    /* The record. Nothing below may fail the call (SPEC 3), but what is the program's
     * (see swallow) goes through, as from the Python version. */
    PyObject *id = PyIter_Next(ids_counter);
    if (id == NULL) {
        if (swallow() < 0) {
            goto program_error;
        }
        id = Py_NewRef(zero);
    }
    slot_put(task, off_id, id);
    slot_put(task, off_name, Py_NewRef(name));
    PyObject *parent = PyObject_CallOneArg(self->current_task, self->loop);
    if (parent == NULL) {
        if (swallow() < 0) {
            goto program_error;
        }
        parent = Py_NewRef(Py_None);
    }
    PyObject *stack = empty_tuple;
    if (self->depth > 0) {
        stack = capture(self, parent);
        if (stack == NULL) {
            if (swallow() < 0) {
                Py_DECREF(parent);
                goto program_error;
            }
            stack = Py_NewRef(empty_tuple);
        }
    }
    else {
        Py_INCREF(stack);
    }
    slot_put(task, off_stack, stack);
    PyObject *created = monotonic();
    if (created == NULL) {
        if (swallow() < 0) {
            Py_DECREF(parent);
            goto program_error;
        }
        created = Py_NewRef(Py_None);
    }
    slot_put(task, off_created, created);
    PyObject *parent_id = NULL;
    if (parent != Py_None) {
        if (PyObject_TypeCheck(parent, watched_task_type)) {
            parent_id = SLOT(parent, off_id);
            Py_XINCREF(parent_id);
        }
        else {  /* a task made as asyncio.Task(...), or by a chained factory */
            parent_id = PyObject_GetAttr(parent, s_lw_id);
            if (parent_id == NULL && swallow() < 0) {
                Py_DECREF(parent);
                goto program_error;
            }
        }
    }
    Py_DECREF(parent);
    slot_put(task, off_parent, parent_id != NULL ? parent_id : Py_NewRef(zero));
    return task;

program_error:
    /* (the task is already scheduled: it runs, as it would after the same error in
     * the Python version) */
    Py_DECREF(task);
    return NULL;
}

static PyObject *
FastCreate_forget(PyObject *op, PyObject *unused)
{
    FastCreate *self = (FastCreate *)op;
    Py_CLEAR(self->last_frame);
    Py_RETURN_NONE;
}

/* FastCreateTask(loop, task_class, depth, slow, current_task, stop_code, skip_files)
 *
 * Called as loop.create_task(coro, *, name=None, context=None) (it binds to the loop
 * like a function) or as the loop's task factory, factory(loop, coro, **kwargs):
 * both arrive as (loop, coro, ...). Anything else (eager_start, ...) goes to `slow`,
 * called with the same arguments. */
static PyObject *
FastCreate_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PyObject *loop, *task_class, *slow, *current_task, *stop_code, *skip_files;
    Py_ssize_t depth;
    if (off_id < 0) {
        PyErr_SetString(PyExc_RuntimeError, "loopwatch._speedups is not configured");
        return NULL;
    }
    if (kwargs != NULL && PyDict_GET_SIZE(kwargs)) {
        PyErr_SetString(PyExc_TypeError, "FastCreateTask takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "OOnOOOO!:FastCreateTask", &loop, &task_class, &depth,
                          &slow, &current_task, &stop_code, &PyFrozenSet_Type,
                          &skip_files)) {
        return NULL;
    }
    if (!PyType_Check(task_class)
            || !PyType_IsSubtype((PyTypeObject *)task_class, watched_task_type)) {
        PyErr_SetString(PyExc_TypeError, "task_class must be a subclass of WatchedTask");
        return NULL;
    }
    FastCreate *self = PyObject_GC_New(FastCreate, type);
    if (self == NULL) {
        return NULL;
    }
    self->vectorcall = FastCreate_vectorcall;
    self->loop = Py_NewRef(loop);
    self->task_class = Py_NewRef(task_class);
    self->slow = Py_NewRef(slow);
    self->current_task = Py_NewRef(current_task);
    self->stop_code = Py_NewRef(stop_code);
    self->skip_files = Py_NewRef(skip_files);
    self->depth = depth < 0 ? 0 : depth;
    self->last_frame = NULL;
    self->last_lasti = -1;
    self->last_stack = Py_NewRef(empty_tuple);
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

static int
FastCreate_traverse(PyObject *op, visitproc visit, void *arg)
{
    FastCreate *self = (FastCreate *)op;
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(self->loop);
    Py_VISIT(self->task_class);
    Py_VISIT(self->slow);
    Py_VISIT(self->current_task);
    Py_VISIT(self->stop_code);
    Py_VISIT(self->skip_files);
    Py_VISIT(self->last_frame);
    Py_VISIT(self->last_stack);
    return 0;
}

static int
FastCreate_clear(PyObject *op)
{
    FastCreate *self = (FastCreate *)op;
    Py_CLEAR(self->loop);
    Py_CLEAR(self->task_class);
    Py_CLEAR(self->slow);
    Py_CLEAR(self->current_task);
    Py_CLEAR(self->stop_code);
    Py_CLEAR(self->skip_files);
    Py_CLEAR(self->last_frame);
    Py_CLEAR(self->last_stack);
    return 0;
}

static void
FastCreate_dealloc(PyObject *op)
{
    PyObject_GC_UnTrack(op);
    FastCreate_clear(op);
    PyObject_GC_Del(op);
}

/* Bound to the loop like a function: `loop.create_task(coro)` passes the loop first. */
static PyObject *
FastCreate_get(PyObject *op, PyObject *obj, PyObject *type)
{
    if (obj == NULL || obj == Py_None) {
        return Py_NewRef(op);
    }
    return PyMethod_New(op, obj);
}

static PyObject *
FastCreate_is_loopwatch(PyObject *op, void *closure)
{
    Py_RETURN_TRUE;
}

static PyGetSetDef FastCreate_getset[] = {
    {"__loopwatch__", FastCreate_is_loopwatch, NULL, "loopwatch's own (a task factory).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef FastCreate_methods[] = {
    {"forget", FastCreate_forget, METH_NOARGS,
     "Let go of the frame of the last capture."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject FastCreate_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "loopwatch._speedups.FastCreateTask",
    .tp_basicsize = sizeof(FastCreate),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL
                | Py_TPFLAGS_METHOD_DESCRIPTOR,
    .tp_doc = "A watched loop's create_task for the common case (see _loops._fast_path).",
    .tp_new = FastCreate_new,
    .tp_dealloc = FastCreate_dealloc,
    .tp_traverse = FastCreate_traverse,
    .tp_clear = FastCreate_clear,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(FastCreate, vectorcall),
    .tp_descr_get = FastCreate_get,
    .tp_methods = FastCreate_methods,
    .tp_getset = FastCreate_getset,
};

/* ------------------------------------------------------------------------ */

static PyMethodDef module_methods[] = {
    {"configure", (PyCFunction)(void (*)(void))configure, METH_FASTCALL,
     "configure(WatchedTask, ids, coro_name, exc_text, monotonic)"},
    {"install_finalizer", (PyCFunction)(void (*)(void))install_finalizer, METH_FASTCALL,
     "install_finalizer(cls, sink): released tasks of cls leave their record with sink."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "loopwatch._speedups",
    .m_doc = "Compiled versions of loopwatch's per-task paths.",
    .m_size = -1,
    .m_methods = module_methods,
};

#define INTERN(var, text) \
    if ((var = PyUnicode_InternFromString(text)) == NULL) return NULL

PyMODINIT_FUNC
PyInit__speedups(void)
{
    INTERN(s_exception, "exception");
    INTERN(s_cancelled, "cancelled");
    INTERN(s_coro, "_coro");
    INTERN(s_cr_code, "cr_code");
    INTERN(s_lw_sink, "_lw_sink");
    INTERN(s_lw_id, "_lw_id");
    INTERN(s_call_soon, "call_soon");
    INTERN(s_forget, "forget");
    INTERN(s_name, "name");
    INTERN(s_context, "context");
    INTERN(s_loop, "loop");
    INTERN(s_FINISHED, "FINISHED");
    INTERN(s_CANCELLED, "CANCELLED");
    INTERN(s_PENDING, "PENDING");
    if ((kw_loop_name = PyTuple_Pack(2, s_loop, s_name)) == NULL
            || (kw_loop_name_context = PyTuple_Pack(3, s_loop, s_name, s_context)) == NULL
            || (empty_tuple = PyTuple_New(0)) == NULL
            || (zero = PyLong_FromLong(0)) == NULL) {
        return NULL;
    }
    if (PyType_Ready(&FastCreate_Type) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&module_def);
    if (m == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(m, "FastCreateTask", (PyObject *)&FastCreate_Type) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
