/* Shared declarations of the _native extension module (Python-facing parts). */
#ifndef CDC_NATIVE_H
#define CDC_NATIVE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "table.h"

extern PyObject *NativeError;   /* cdc_notebook._native.NativeDecodeError */

typedef struct {
    PyObject_HEAD
    Tab *tab;
    int binary_complete;   /* every column's binary decoder renders all its values */
    PyObject *schema;      /* the pyarrow schema object it was built from */
} TablePlanObject;

extern PyTypeObject TablePlanType;
extern PyTypeObject CopyDecoderType;
extern PyTypeObject PgoutputDecoderType;

PyObject *libpq_bind(PyObject *module, PyObject *args);   /* copy.c */
PyObject *raise_native(void);             /* NativeDecodeError from cdc_errbuf; returns NULL */
PyObject *array_capsule(struct ArrowArray *moved);   /* "arrow_array" capsule owning a copy */

#endif
