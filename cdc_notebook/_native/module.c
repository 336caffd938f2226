/*
 * cdc_notebook._native: binary COPY and pgoutput decoders writing Arrow arrays through the
 * Arrow C data interface (no link to Arrow's C++ libraries; pyarrow imports the capsules).
 */
#include "native.h"

PyObject *NativeError;

PyObject *raise_native(void) {
    PyErr_SetString(NativeError, cdc_errbuf[0] ? cdc_errbuf : "native decoder failure");
    cdc_errbuf[0] = '\0';
    return NULL;
}

static void array_capsule_destructor(PyObject *cap) {
    struct ArrowArray *a = PyCapsule_GetPointer(cap, "arrow_array");
    if (!a) {
        PyErr_Clear();
        return;
    }
    if (a->release)
        a->release(a);
    free(a);
}

PyObject *array_capsule(struct ArrowArray *moved) {
    struct ArrowArray *a = malloc(sizeof *a);
    if (!a) {
        if (moved->release)
            moved->release(moved);
        return PyErr_NoMemory();
    }
    *a = *moved;
    moved->release = NULL;
    PyObject *cap = PyCapsule_New(a, "arrow_array", array_capsule_destructor);
    if (!cap) {
        a->release(a);
        free(a);
    }
    return cap;
}

static void schema_capsule_destructor(PyObject *cap) {
    struct ArrowSchema *s = PyCapsule_GetPointer(cap, "arrow_schema");
    if (!s) {
        PyErr_Clear();
        return;
    }
    if (s->release)
        s->release(s);
    free(s);
}

/* ------------------------------------------------------------------ TablePlan */

static int assign_kind(Col *c, PyObject *desc, int *complete) {
    const char *name;
    PyObject *elem = NULL;
    if (PyUnicode_Check(desc)) {
        name = PyUnicode_AsUTF8(desc);
    } else if (PyTuple_Check(desc) && PyTuple_GET_SIZE(desc) == 2 &&
               PyUnicode_Check(PyTuple_GET_ITEM(desc, 0))) {
        name = PyUnicode_AsUTF8(PyTuple_GET_ITEM(desc, 0));
        elem = PyTuple_GET_ITEM(desc, 1);
    } else {
        PyErr_Format(PyExc_TypeError, "column '%s': a kind is a str or ('array', element kind)",
                     c->name);
        return -1;
    }
    if (!name)
        return -1;
    c->kind = kind_from_name(name);
    if (c->kind == K_NONE) {
        PyErr_Format(PyExc_ValueError, "column '%s': unknown decoder kind '%s'", c->name, name);
        return -1;
    }
    if ((c->kind == K_ARRAY) != (elem != NULL)) {
        PyErr_Format(PyExc_ValueError, "column '%s': 'array' takes an element kind, others none",
                     c->name);
        return -1;
    }
    if (!kind_binary_complete(c->kind))
        *complete = 0;
    if (kind_check_layout(c) < 0) {
        raise_native();
        return -1;
    }
    if (c->kind == K_DECIMAL) {
        int p = 0, s = 0;
        if (sscanf(c->format, "d:%d,%d", &p, &s) != 2 || p < 1 || p > 38 || s < 0 || s > p) {
            PyErr_Format(PyExc_ValueError, "column '%s': decimal '%s' is outside decimal128's "
                         "precision", c->name, c->format);
            return -1;
        }
        c->param[0] = p;
        c->param[1] = s;
    }
    if (elem) {
        int ignored = 1;
        return assign_kind(c->children[0], elem, &ignored);
    }
    return 0;
}

static int TablePlan_init(TablePlanObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"schema", "kinds", NULL};
    PyObject *schema, *kinds;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO", kwlist, &schema, &kinds))
        return -1;
    PyObject *cap = PyObject_CallMethod(schema, "__arrow_c_schema__", NULL);
    if (!cap)
        return -1;
    struct ArrowSchema *s = PyCapsule_GetPointer(cap, "arrow_schema");
    if (!s) {
        Py_DECREF(cap);
        return -1;
    }
    Tab *tab = tab_new(s);
    Py_DECREF(cap);
    if (!tab) {
        raise_native();
        return -1;
    }
    PyObject *seq = PySequence_Fast(kinds, "kinds must be a sequence");
    if (!seq) {
        tab_free(tab);
        return -1;
    }
    if (PySequence_Fast_GET_SIZE(seq) != tab->ntable) {
        PyErr_Format(PyExc_ValueError, "%zd kinds for %d table columns",
                     PySequence_Fast_GET_SIZE(seq), tab->ntable);
        goto fail;
    }
    int complete = 1;
    for (int i = 0; i < tab->ntable; i++) {
        PyObject *desc = PySequence_Fast_GET_ITEM(seq, i);
        if (assign_kind(tab->root->children[i], desc, &complete) < 0 ||
            assign_kind(tab->before->children[i], desc, &complete) < 0)
            goto fail;
    }
    Py_DECREF(seq);
    tab_free(self->tab);
    self->tab = tab;
    self->binary_complete = complete;
    Py_INCREF(schema);
    Py_XSETREF(self->schema, schema);
    return 0;
fail:
    Py_DECREF(seq);
    tab_free(tab);
    return -1;
}

static void TablePlan_dealloc(TablePlanObject *self) {
    tab_free(self->tab);
    Py_XDECREF(self->schema);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *TablePlan_get_binary(TablePlanObject *self, void *closure) {
    return PyBool_FromLong(self->binary_complete);
}

static PyObject *TablePlan_get_schema(TablePlanObject *self, void *closure) {
    if (!self->schema)
        Py_RETURN_NONE;
    Py_INCREF(self->schema);
    return self->schema;
}

static PyObject *TablePlan_arrow_schema(TablePlanObject *self, PyObject *unused) {
    if (!self->tab) {
        PyErr_SetString(PyExc_ValueError, "TablePlan not initialised");
        return NULL;
    }
    struct ArrowSchema *s = malloc(sizeof *s);
    if (!s)
        return PyErr_NoMemory();
    if (col_export_schema(self->tab->root, s) < 0) {
        free(s);
        return raise_native();
    }
    PyObject *cap = PyCapsule_New(s, "arrow_schema", schema_capsule_destructor);
    if (!cap) {
        s->release(s);
        free(s);
    }
    return cap;
}

static PyGetSetDef TablePlan_getset[] = {
    {"binary_complete", (getter)TablePlan_get_binary, NULL,
     "True when every column's binary decoder renders all of its values (binary mode is safe)",
     NULL},
    {"schema", (getter)TablePlan_get_schema, NULL, "the pyarrow schema of the batches", NULL},
    {NULL},
};

static PyMethodDef TablePlan_methods[] = {
    {"__arrow_c_schema__", (PyCFunction)TablePlan_arrow_schema, METH_NOARGS,
     "the batch schema as written by the native builders (an 'arrow_schema' capsule)"},
    {NULL},
};

PyTypeObject TablePlanType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "cdc_notebook._native.TablePlan",
    .tp_basicsize = sizeof(TablePlanObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "TablePlan(schema, kinds): how one table's change batches are built.\n\n"
              "schema: the full change-batch schema (table columns + _cdc_* columns);\n"
              "kinds: per table column, the spec's decoder kind (a typreceive name, "
              "'numeric_text', 'other', or ('array', element kind)).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)TablePlan_init,
    .tp_dealloc = (destructor)TablePlan_dealloc,
    .tp_getset = TablePlan_getset,
    .tp_methods = TablePlan_methods,
};

/* ------------------------------------------------------------------ module */

static PyMethodDef module_methods[] = {
    {"libpq_bind", libpq_bind, METH_VARARGS,
     "libpq_bind(path, conn_ptr, socket, backend_pid): use the already loaded libpq at path for "
     "CopyDecoder.read() if it drives that connection (psycopg's PGconn pointer, socket and "
     "backend pid); returns whether it does. The first library bound stays for the process."},
    {NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "_native",
    "Native decoders of cdc_notebook: binary COPY and pgoutput into Arrow (C data interface).",
    -1, module_methods,
};

PyMODINIT_FUNC PyInit__native(void) {
    if (PyType_Ready(&TablePlanType) < 0 || PyType_Ready(&CopyDecoderType) < 0 ||
        PyType_Ready(&PgoutputDecoderType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (!m)
        return NULL;
    NativeError = PyErr_NewException("cdc_notebook._native.NativeDecodeError", PyExc_ValueError, NULL);
    if (!NativeError || PyModule_AddObjectRef(m, "NativeDecodeError", NativeError) < 0 ||
        PyModule_AddObjectRef(m, "TablePlan", (PyObject *)&TablePlanType) < 0 ||
        PyModule_AddObjectRef(m, "CopyDecoder", (PyObject *)&CopyDecoderType) < 0 ||
        PyModule_AddObjectRef(m, "PgoutputDecoder", (PyObject *)&PgoutputDecoderType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
