"""Build script for the native decoders; package metadata lives in pyproject.toml."""

from setuptools import Extension, setup

NATIVE_SOURCES = [
    "cdc_notebook/_native/builder.c",
    "cdc_notebook/_native/decode.c",
    "cdc_notebook/_native/table.c",
    "cdc_notebook/_native/copy.c",
    "cdc_notebook/_native/pgoutput.c",
    "cdc_notebook/_native/module.c",
]

setup(
    ext_modules=[
        Extension(
            "cdc_notebook._native._native",
            sources=NATIVE_SOURCES,
            depends=[
                "cdc_notebook/_native/arrow_abi.h",
                "cdc_notebook/_native/builder.h",
                "cdc_notebook/_native/decode.h",
                "cdc_notebook/_native/table.h",
                "cdc_notebook/_native/native.h",
            ],
            libraries=["dl"],  # dlopen/dlsym: CopyDecoder.read() uses psycopg's own libpq
            extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wno-unused-parameter",
                                "-fvisibility=hidden"],
        )
    ],
)
