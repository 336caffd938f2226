#include "decode.h"

#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>
#include <sys/socket.h>

#define PG_EPOCH_DAYS 10957                          /* 2000-01-01 - 1970-01-01 in days */
#define PG_EPOCH_US (INT64_C(10957) * 86400000000)
#define US_PER_DAY INT64_C(86400000000)

typedef __int128 i128;

static const struct { const char *name; int kind; } KIND_NAMES[] = {
    {"boolrecv", K_BOOL}, {"int2recv", K_INT2}, {"int4recv", K_INT4}, {"int8recv", K_INT8},
    {"oidrecv", K_OID}, {"float4recv", K_FLOAT4}, {"float8recv", K_FLOAT8},
    {"numeric_recv", K_DECIMAL}, {"numeric_text", K_NUMERIC_TEXT},
    {"textrecv", K_TEXT}, {"varcharrecv", K_TEXT}, {"bpcharrecv", K_TEXT}, {"namerecv", K_TEXT},
    {"enum_recv", K_TEXT}, {"bytearecv", K_BYTEA}, {"json_recv", K_JSON}, {"jsonb_recv", K_JSONB},
    {"date_recv", K_DATE}, {"time_recv", K_TIME}, {"timetz_recv", K_TIMETZ},
    {"timestamp_recv", K_TIMESTAMP}, {"timestamptz_recv", K_TIMESTAMPTZ},
    {"interval_recv", K_INTERVAL}, {"uuid_recv", K_UUID}, {"inet_recv", K_INET},
    {"cidr_recv", K_INET}, {"macaddr_recv", K_MACADDR}, {"macaddr8_recv", K_MACADDR8},
    {"array", K_ARRAY}, {"other", K_OTHER},
};

int kind_from_name(const char *name) {
    for (size_t i = 0; i < sizeof KIND_NAMES / sizeof KIND_NAMES[0]; i++)
        if (!strcmp(KIND_NAMES[i].name, name))
            return KIND_NAMES[i].kind;
    return K_NONE;
}

const char *kind_name(int kind) {
    for (size_t i = 0; i < sizeof KIND_NAMES / sizeof KIND_NAMES[0]; i++)
        if (KIND_NAMES[i].kind == kind)
            return KIND_NAMES[i].name;
    return "?";
}

int kind_binary_complete(int kind) { return kind != K_ARRAY && kind != K_OTHER && kind != K_NONE; }

int kind_check_layout(Col *c) {
    const char *f = c->format;
    int ok;
    switch (c->kind) {
    case K_BOOL: ok = !strcmp(f, "b"); break;
    case K_INT2: ok = !strcmp(f, "s"); break;
    case K_INT4: ok = !strcmp(f, "i"); break;
    case K_INT8: ok = !strcmp(f, "l"); break;
    case K_OID: ok = !strcmp(f, "I"); break;
    case K_FLOAT4: ok = !strcmp(f, "f"); break;
    case K_FLOAT8: ok = !strcmp(f, "g"); break;
    case K_DECIMAL: ok = f[0] == 'd' && f[1] == ':'; break;
    case K_NUMERIC_TEXT: case K_TEXT: case K_JSON: case K_JSONB: case K_INET: case K_MACADDR:
    case K_MACADDR8: case K_OTHER: ok = !strcmp(f, "u"); break;
    case K_BYTEA: ok = !strcmp(f, "z"); break;
    case K_DATE: ok = !strcmp(f, "tdD"); break;
    case K_TIME: ok = !strcmp(f, "ttu"); break;
    case K_TIMETZ: ok = c->layout == LAYOUT_STRUCT && c->nchildren == 2 &&
                        !strcmp(c->children[0]->format, "ttu") &&
                        !strcmp(c->children[1]->format, "i"); break;
    case K_TIMESTAMP: ok = !strcmp(f, "tsu:"); break;
    case K_TIMESTAMPTZ: ok = !strncmp(f, "tsu:", 4) && f[4] != '\0'; break;
    case K_INTERVAL: ok = !strcmp(f, "tin"); break;
    case K_UUID: ok = !strcmp(f, "w:16"); break;
    case K_ARRAY: ok = c->layout == LAYOUT_LIST; break;
    default: ok = 0;
    }
    if (!ok)
        return cdc_fail("column '%s': Arrow type '%s' does not match decoder '%s'", c->name, f,
                        kind_name(c->kind));
    return 0;
}

/* ------------------------------------------------------------------ small helpers */

static inline int16_t rd16(const uint8_t *p) { return (int16_t)((p[0] << 8) | p[1]); }
static inline int32_t rd32(const uint8_t *p) {
    return (int32_t)(((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3]);
}
static inline int64_t rd64(const uint8_t *p) {
    return (int64_t)(((uint64_t)(uint32_t)rd32(p) << 32) | (uint32_t)rd32(p + 4));
}

static int need(Col *c, int32_t len, int32_t want) {
    if (len != want)
        return cdc_fail("column '%s': binary %s value of %d bytes, expected %d", c->name,
                        kind_name(c->kind), len, want);
    return 0;
}

static int unrep_null(Col *c) { return col_append_null(c) < 0 ? DEC_ERR : DEC_UNREP; }

static void put(Buf *b, const char *s) { buf_append(b, s, (int64_t)strlen(s)); }

static void putf(Buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void putf(Buf *b, const char *fmt, ...) {
    char tmp[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n > 0)
        buf_append(b, tmp, n < (int)sizeof tmp ? n : (int)sizeof tmp - 1);
}

/* Civil calendar <-> days since 1970-01-01 (proleptic Gregorian; year 0 = 1 BC). */
static int64_t days_from_civil(int64_t y, int m, int d) {
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static void civil_from_days(int64_t z, int64_t *y, int *m, int *d) {
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    *d = (int)(doy - (153 * mp + 2) / 5 + 1);
    *m = (int)(mp < 10 ? mp + 3 : mp - 9);
    *y = yoe + era * 400 + (*m <= 2);
}

/* "HH:MM:SS[.ffffff]" with trailing zeros of the fraction trimmed, as PostgreSQL prints it. */
static void put_clock(Buf *b, int64_t hour, int64_t min, int64_t sec, int64_t usec) {
    putf(b, "%02lld:%02lld:%02lld", (long long)hour, (long long)min, (long long)sec);
    if (usec) {
        char frac[8];
        snprintf(frac, sizeof frac, "%06lld", (long long)usec);
        int n = 6;
        while (n > 0 && frac[n - 1] == '0')
            n--;
        frac[n] = '\0';
        putf(b, ".%s", frac);
    }
}

/* Timestamp text (DateStyle ISO) of microseconds since 2000-01-01, AD years only: used for
 * values past Arrow's range, which are all far in the future. */
static void put_pg_timestamp(Buf *b, int64_t pgus, int with_tz) {
    int64_t days = pgus / US_PER_DAY, rem = pgus % US_PER_DAY;
    if (rem < 0) {
        rem += US_PER_DAY;
        days--;
    }
    int64_t y;
    int m, d;
    civil_from_days(days + PG_EPOCH_DAYS, &y, &m, &d);
    putf(b, "%04lld-%02d-%02d ", (long long)y, m, d);
    int64_t s = rem / 1000000;
    put_clock(b, s / 3600, (s / 60) % 60, s % 60, rem % 1000000);
    if (with_tz)
        put(b, "+00");
}

static void put_tz(Buf *b, int32_t zone_west) {
    int32_t sec = zone_west < 0 ? -zone_west : zone_west;
    int32_t min = sec / 60;
    sec -= min * 60;
    int32_t hour = min / 60;
    min -= hour * 60;
    put(b, zone_west <= 0 ? "+" : "-");
    if (sec)
        putf(b, "%02d:%02d:%02d", hour, min, sec);
    else if (min)
        putf(b, "%02d:%02d", hour, min);
    else
        putf(b, "%02d", hour);
}

static void put_int_part(Buf *b, int64_t v, const char *unit, int *is_zero, int *is_before) {
    if (v == 0)
        return;
    putf(b, "%s%s%lld %s%s", !*is_zero ? " " : "", (*is_before && v > 0) ? "+" : "",
         (long long)v, unit, v != 1 ? "s" : "");
    *is_before = v < 0;
    *is_zero = 0;
}

/* Interval text in IntervalStyle 'postgres' (the default). */
static void put_pg_interval(Buf *b, int32_t months, int32_t days, int64_t us) {
    int is_zero = 1, is_before = 0;
    put_int_part(b, months / 12, "year", &is_zero, &is_before);
    put_int_part(b, months % 12, "mon", &is_zero, &is_before);
    put_int_part(b, days, "day", &is_zero, &is_before);
    int64_t hour = us / INT64_C(3600000000);
    us -= hour * INT64_C(3600000000);
    int64_t min = us / 60000000;
    us -= min * 60000000;
    int64_t sec = us / 1000000;
    int64_t fsec = us - sec * 1000000;
    if (is_zero || hour || min || sec || fsec) {
        int minus = hour < 0 || min < 0 || sec < 0 || fsec < 0;
        put(b, is_zero ? "" : " ");
        put(b, minus ? "-" : (is_before ? "+" : ""));
        put_clock(b, llabs(hour), llabs(min), llabs(sec), llabs(fsec));
    }
}

/* ------------------------------------------------------------------ numeric */

#define NUMERIC_POS 0x0000
#define NUMERIC_NEG 0x4000
#define NUMERIC_NAN 0xC000
#define NUMERIC_PINF 0xD000
#define NUMERIC_NINF 0xF000

static const int64_t POW10[19] = {1, 10, 100, 1000, 10000, 100000, 1000000, 10000000,
                                  100000000, 1000000000, INT64_C(10000000000),
                                  INT64_C(100000000000), INT64_C(1000000000000),
                                  INT64_C(10000000000000), INT64_C(100000000000000),
                                  INT64_C(1000000000000000), INT64_C(10000000000000000),
                                  INT64_C(100000000000000000), INT64_C(1000000000000000000)};

static i128 pow10_128(int n) {
    i128 v = 1;
    while (n-- > 0)
        v *= 10;
    return v;
}

static void put_numeric_special(Buf *b, uint16_t sign) {
    put(b, sign == NUMERIC_NAN ? "NaN" : sign == NUMERIC_PINF ? "Infinity" : "-Infinity");
}

/* numeric_out of a binary numeric. */
static int numeric_bin_to_text(const uint8_t *p, int32_t len, Buf *out) {
    if (len < 8)
        return cdc_fail("binary numeric of %d bytes is truncated", len);
    int ndigits = rd16(p), weight = rd16(p + 2);
    uint16_t sign = (uint16_t)rd16(p + 4);
    int dscale = rd16(p + 6);
    if (len != 8 + 2 * ndigits)
        return cdc_fail("binary numeric: %d digits in %d bytes", ndigits, len);
    if (sign == NUMERIC_NAN || sign == NUMERIC_PINF || sign == NUMERIC_NINF) {
        put_numeric_special(out, sign);
        return 0;
    }
    const uint8_t *dig = p + 8;
    if (sign == NUMERIC_NEG)
        put(out, "-");
    if (weight < 0) {
        put(out, "0");
    } else {
        for (int g = 0; g <= weight; g++) {
            int d = g < ndigits ? rd16(dig + 2 * g) : 0;
            if (g == 0)
                putf(out, "%d", d);
            else
                putf(out, "%04d", d);
        }
    }
    if (dscale > 0) {
        put(out, ".");
        int written = 0;
        for (int g = weight + 1; written < dscale; g++) {
            int d = (g >= 0 && g < ndigits) ? rd16(dig + 2 * g) : 0;
            char four[12];
            snprintf(four, sizeof four, "%04d", d);
            int take = dscale - written < 4 ? dscale - written : 4;
            buf_append(out, four, take);
            written += take;
        }
    }
    return 0;
}

static int append_decimal(Col *c, i128 v) {
    /* little-endian two's complement, which is the machine's representation here */
    return col_append_fixed(c, &v);
}

static int decimal_bin(Col *c, const uint8_t *p, int32_t len, Buf *unrep) {
    if (len < 8)
        return cdc_fail("column '%s': binary numeric of %d bytes", c->name, len);
    int ndigits = rd16(p), weight = rd16(p + 2);
    uint16_t sign = (uint16_t)rd16(p + 4);
    int s = c->param[1];
    if (sign == NUMERIC_NAN || sign == NUMERIC_PINF || sign == NUMERIC_NINF) {
        put_numeric_special(unrep, sign);
        return unrep_null(c);
    }
    if (len != 8 + 2 * ndigits)
        return cdc_fail("column '%s': binary numeric with %d digits in %d bytes", c->name,
                        ndigits, len);
    i128 acc = 0;
    int frac = 0;
    for (int i = 0; i < ndigits; i++) {
        int d = rd16(p + 8 + 2 * i);
        int pos = weight - i;
        if (pos >= 0) {
            acc = acc * 10000 + d;
            continue;
        }
        int fd = -4 * pos;
        if (fd <= s) {
            acc = acc * 10000 + d;
            frac = fd;
        } else if (fd - 4 < s) {
            int k = fd - s;
            acc = acc * POW10[4 - k] + d / POW10[k];
            frac = s;
        } else {
            break;
        }
    }
    int lastpos = weight - (ndigits - 1);
    if (ndigits && lastpos > 0)
        acc *= pow10_128(4 * lastpos);
    else if (!ndigits && weight > 0)
        acc = 0;
    acc *= pow10_128(s - frac);
    if (acc >= pow10_128(c->param[0])) {
        numeric_bin_to_text(p, len, unrep);
        return unrep_null(c);
    }
    if (sign == NUMERIC_NEG)
        acc = -acc;
    return append_decimal(c, acc);
}

static int decimal_text(Col *c, const char *p, int32_t len) {
    int32_t i = 0;
    int neg = 0;
    if (i < len && (p[i] == '-' || p[i] == '+'))
        neg = p[i++] == '-';
    if (i >= len || !((p[i] >= '0' && p[i] <= '9') || p[i] == '.'))
        return unrep_null(c); /* NaN, Infinity, -Infinity */
    int s = c->param[1], frac = -1, ndig = 0;
    i128 acc = 0;
    for (; i < len; i++) {
        char ch = p[i];
        if (ch == '.') {
            frac = 0;
            continue;
        }
        if (ch < '0' || ch > '9')
            return cdc_fail("column '%s': bad numeric text '%.*s'", c->name, (int)len, p);
        if (frac >= 0) {
            if (frac == s)
                continue; /* digits beyond the column's scale are zeros */
            frac++;
        }
        acc = acc * 10 + (ch - '0');
        if (++ndig > 60)
            return unrep_null(c);
    }
    if (frac < 0)
        frac = 0;
    acc *= pow10_128(s - frac);
    if (acc >= pow10_128(c->param[0]))
        return unrep_null(c);
    return append_decimal(c, neg ? -acc : acc);
}

/* ------------------------------------------------------------------ network types */

static int inet_bin_to_text(const uint8_t *p, int32_t len, Buf *out) {
    if (len < 4)
        return cdc_fail("binary inet of %d bytes", len);
    int family = p[0], bits = p[1], is_cidr = p[2], nb = p[3];
    char addr[INET6_ADDRSTRLEN + 8];
    uint8_t raw[16] = {0};
    if (nb > 16 || len != 4 + nb)
        return cdc_fail("binary inet with %d address bytes in %d", nb, len);
    memcpy(raw, p + 4, (size_t)nb);
    int af = family == 2 ? AF_INET : AF_INET6, maxbits = family == 2 ? 32 : 128;
    if (family != 2 && family != 3)
        return cdc_fail("binary inet of unknown family %d", family);
    if (!inet_ntop(af, raw, addr, sizeof addr))
        return cdc_fail("cannot format an inet address");
    put(out, addr);
    if (is_cidr || bits != maxbits)
        putf(out, "/%d", bits);
    return 0;
}

static int mac_bin_to_text(const uint8_t *p, int32_t len, int want, Buf *out) {
    if (len != want)
        return cdc_fail("binary macaddr of %d bytes, expected %d", len, want);
    for (int i = 0; i < len; i++)
        putf(out, i ? ":%02x" : "%02x", p[i]);
    return 0;
}

/* ------------------------------------------------------------------ text parsing helpers */

typedef struct {
    const char *p;
    const char *end;
} Cur;

static int cur_int(Cur *c, int64_t *out, int maxdigits) {
    int64_t v = 0;
    int n = 0;
    while (c->p < c->end && *c->p >= '0' && *c->p <= '9' && n < maxdigits) {
        v = v * 10 + (*c->p++ - '0');
        n++;
    }
    *out = v;
    return n;
}

static int cur_lit(Cur *c, char ch) {
    if (c->p < c->end && *c->p == ch) {
        c->p++;
        return 1;
    }
    return 0;
}

static int cur_rest_is(Cur *c, const char *s) {
    size_t n = strlen(s);
    return (size_t)(c->end - c->p) == n && !memcmp(c->p, s, n);
}

/* "HH:MM:SS[.f]" -> microseconds */
static int parse_clock(Cur *c, int64_t *us) {
    int64_t h, m, s, frac = 0;
    if (!cur_int(c, &h, 12) || !cur_lit(c, ':') || cur_int(c, &m, 2) != 2 || !cur_lit(c, ':') ||
        cur_int(c, &s, 2) != 2)
        return -1;
    if (cur_lit(c, '.')) {
        int n = 0;
        while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
            if (n < 6) {
                frac = frac * 10 + (*c->p - '0');
                n++;
            }
            c->p++;
        }
        while (n++ < 6)
            frac *= 10;
    }
    *us = ((h * 60 + m) * 60 + s) * 1000000 + frac;
    return 0;
}

/* "+HH[:MM[:SS]]" -> seconds east of UTC */
static int parse_offset(Cur *c, int32_t *east) {
    if (c->p >= c->end || (*c->p != '+' && *c->p != '-'))
        return -1;
    int neg = *c->p++ == '-';
    int64_t h, m = 0, s = 0;
    if (!cur_int(c, &h, 2))
        return -1;
    if (cur_lit(c, ':') && cur_int(c, &m, 2) != 2)
        return -1;
    if (cur_lit(c, ':') && cur_int(c, &s, 2) != 2)
        return -1;
    int32_t v = (int32_t)(h * 3600 + m * 60 + s);
    *east = neg ? -v : v;
    return 0;
}

/* "YYYY-MM-DD" -> days since 1970 (the " BC" suffix is applied by the caller) */
static int parse_date(Cur *c, int64_t *year, int *mon, int *day) {
    int64_t y, m, d;
    if (cur_int(c, &y, 9) < 4 || !cur_lit(c, '-') || cur_int(c, &m, 2) != 2 || !cur_lit(c, '-') ||
        cur_int(c, &d, 2) != 2)
        return -1;
    *year = y;
    *mon = (int)m;
    *day = (int)d;
    return 0;
}

static int parse_bc(Cur *c) {
    if (c->end - c->p == 3 && !memcmp(c->p, " BC", 3)) {
        c->p += 3;
        return 1;
    }
    return 0;
}

static int bad_text(Col *c, const char *p, int32_t len) {
    return cdc_fail("column '%s': cannot read %s text '%.*s' (the kit expects DateStyle=ISO, "
                    "IntervalStyle=postgres, bytea_output=hex)", c->name, kind_name(c->kind),
                    len > 80 ? 80 : (int)len, p);
}

static int hexval(char ch) {
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

static int interval_text(Col *c, const char *p, int32_t len) {
    Cur cur = {p, p + len};
    if (cur_rest_is(&cur, "infinity") || cur_rest_is(&cur, "-infinity"))
        return unrep_null(c);
    int64_t months = 0, days = 0, us = 0;
    while (cur.p < cur.end) {
        while (cur.p < cur.end && *cur.p == ' ')
            cur.p++;
        if (cur.p >= cur.end)
            break;
        const char *start = cur.p;
        int neg = 0;
        if (*cur.p == '+' || *cur.p == '-')
            neg = *cur.p++ == '-';
        Cur probe = cur;
        int64_t v;
        if (!cur_int(&probe, &v, 19))
            return bad_text(c, p, len);
        if (probe.p < probe.end && *probe.p == ':') {
            int64_t t;
            if (parse_clock(&cur, &t) < 0)
                return bad_text(c, p, len);
            us = neg ? -t : t;
            continue;
        }
        cur = probe;
        if (!cur_lit(&cur, ' '))
            return bad_text(c, p, len);
        const char *u = cur.p;
        while (cur.p < cur.end && *cur.p != ' ')
            cur.p++;
        size_t ul = (size_t)(cur.p - u);
        if (neg)
            v = -v;
        if (!strncmp(u, "year", 4) && (ul == 4 || ul == 5))
            months += v * 12;
        else if (!strncmp(u, "mon", 3) && (ul == 3 || ul == 4))
            months += v;
        else if (!strncmp(u, "day", 3) && (ul == 3 || ul == 4))
            days += v;
        else
            return bad_text(c, start, (int32_t)(cur.end - start));
    }
    int64_t nanos;
    if (__builtin_mul_overflow(us, 1000, &nanos))
        return unrep_null(c);
    struct { int32_t months, days; int64_t nanos; } v = {(int32_t)months, (int32_t)days, nanos};
    return col_append_fixed(c, &v);
}

/* ------------------------------------------------------------------ arrays */

static int array_bin(Col *c, const uint8_t *p, int32_t len, Buf *unrep) {
    Col *child = c->children[0];
    if (len < 12)
        return cdc_fail("column '%s': binary array of %d bytes", c->name, len);
    int32_t ndim = rd32(p);
    if (ndim < 0 || ndim > 6 || len < 12 + 8 * ndim)
        return cdc_fail("column '%s': binary array with %d dimensions", c->name, ndim);
    int64_t n = ndim ? 1 : 0;
    int unrepresentable = ndim > 1;
    for (int d = 0; d < ndim; d++) {
        n *= rd32(p + 12 + 8 * d);
        if (rd32(p + 16 + 8 * d) != 1)
            unrepresentable = 1;
    }
    const uint8_t *q = p + 12 + 8 * ndim, *end = p + len;
    Buf scratch = {0};
    for (int64_t i = 0; i < n; i++) {
        if (end - q < 4)
            goto truncated;
        int32_t elen = rd32(q);
        q += 4;
        if (elen < 0) {
            if (col_append_null(child) < 0)
                goto fail;
            continue;
        }
        if (end - q < elen)
            goto truncated;
        scratch.len = 0;
        int r = decode_binary(child, q, elen, &scratch);
        if (r == DEC_ERR)
            goto fail;
        if (r == DEC_UNREP)
            unrepresentable = 1;
        q += elen;
    }
    free(scratch.data);
    if (col_list_finish(c) < 0)
        return DEC_ERR;
    (void)unrep; /* the whole array's text is not rendered here: the snapshot fetches it */
    return unrepresentable ? DEC_UNREP : DEC_OK;
truncated:
    cdc_fail("column '%s': binary array is truncated", c->name);
fail:
    free(scratch.data);
    return DEC_ERR;
}

static _Thread_local Buf elem_scratch;

static int array_text(Col *c, const char *p, int32_t len) {
    Col *child = c->children[0];
    Cur cur = {p, p + len};
    int unrepresentable = 0;
    if (cur.p < cur.end && *cur.p == '[') {
        /* dimension decoration: some lower bound is not 1 */
        unrepresentable = 1;
        while (cur.p < cur.end && *cur.p != '=')
            cur.p++;
        if (!cur_lit(&cur, '='))
            return bad_text(c, p, len);
    }
    int depth = 0, maxdepth = 0;
    while (cur.p < cur.end) {
        char ch = *cur.p;
        if (ch == '{') {
            depth++;
            if (depth > maxdepth)
                maxdepth = depth;
            cur.p++;
            continue;
        }
        if (ch == '}') {
            depth--;
            cur.p++;
            continue;
        }
        if (ch == ',' || ch == ' ') {
            cur.p++;
            continue;
        }
        int r;
        if (ch == '"') {
            elem_scratch.len = 0;
            cur.p++;
            while (cur.p < cur.end && *cur.p != '"') {
                if (*cur.p == '\\' && cur.p + 1 < cur.end)
                    cur.p++;
                if (buf_append(&elem_scratch, cur.p, 1) < 0)
                    return DEC_ERR;
                cur.p++;
            }
            if (!cur_lit(&cur, '"'))
                return bad_text(c, p, len);
            r = decode_text(child, (const char *)elem_scratch.data, (int32_t)elem_scratch.len);
        } else {
            const char *s = cur.p;
            while (cur.p < cur.end && *cur.p != ',' && *cur.p != '}')
                cur.p++;
            int32_t n = (int32_t)(cur.p - s);
            if (n == 4 && (s[0] == 'N' || s[0] == 'n') && !strncasecmp(s, "NULL", 4))
                r = col_append_null(child);
            else
                r = decode_text(child, s, n);
        }
        if (r == DEC_ERR)
            return DEC_ERR;
        if (r == DEC_UNREP)
            unrepresentable = 1;
    }
    if (depth != 0)
        return bad_text(c, p, len);
    if (maxdepth > 1)
        unrepresentable = 1;
    if (col_list_finish(c) < 0)
        return DEC_ERR;
    return unrepresentable ? DEC_UNREP : DEC_OK;
}

/* ------------------------------------------------------------------ binary dispatch */

int decode_binary(Col *c, const uint8_t *p, int32_t len, Buf *unrep) {
    switch (c->kind) {
    case K_BOOL:
        if (need(c, len, 1) < 0)
            return DEC_ERR;
        return col_append_bool(c, p[0] != 0);
    case K_INT2: {
        if (need(c, len, 2) < 0)
            return DEC_ERR;
        int16_t v = rd16(p);
        return col_append_fixed(c, &v);
    }
    case K_INT4:
    case K_OID:
    case K_FLOAT4: {
        if (need(c, len, 4) < 0)
            return DEC_ERR;
        int32_t v = rd32(p);
        return col_append_fixed(c, &v);
    }
    case K_INT8:
    case K_FLOAT8: {
        if (need(c, len, 8) < 0)
            return DEC_ERR;
        int64_t v = rd64(p);
        return col_append_fixed(c, &v);
    }
    case K_DECIMAL:
        return decimal_bin(c, p, len, unrep);
    case K_NUMERIC_TEXT:
        if (numeric_bin_to_text(p, len, &c->data) < 0)
            return DEC_ERR;
        return col_varbin_finish(c);
    case K_TEXT:
    case K_JSON:
    case K_OTHER: /* the snapshot selects these columns as ::text; pgoutput never sends them as 'b' */
        return col_append_varbin(c, p, len);
    case K_BYTEA:
        return col_append_varbin(c, p, len);
    case K_JSONB:
        if (len < 1 || p[0] != 1)
            return cdc_fail("column '%s': unknown jsonb binary version", c->name);
        return col_append_varbin(c, p + 1, len - 1);
    case K_DATE: {
        if (need(c, len, 4) < 0)
            return DEC_ERR;
        int32_t d = rd32(p);
        if (d == INT32_MAX || d == INT32_MIN) {
            put(unrep, d == INT32_MAX ? "infinity" : "-infinity");
            return unrep_null(c);
        }
        int32_t v = d + PG_EPOCH_DAYS;
        return col_append_fixed(c, &v);
    }
    case K_TIME: {
        if (need(c, len, 8) < 0)
            return DEC_ERR;
        int64_t t = rd64(p);
        if (t >= US_PER_DAY) {
            put_clock(unrep, t / 3600000000, (t / 60000000) % 60, (t / 1000000) % 60, t % 1000000);
            return unrep_null(c);
        }
        return col_append_fixed(c, &t);
    }
    case K_TIMETZ: {
        if (need(c, len, 12) < 0)
            return DEC_ERR;
        int64_t t = rd64(p);
        int32_t zone = rd32(p + 8);
        if (t >= US_PER_DAY) {
            put_clock(unrep, t / 3600000000, (t / 60000000) % 60, (t / 1000000) % 60, t % 1000000);
            put_tz(unrep, zone);
            return unrep_null(c);
        }
        int32_t east = -zone;
        if (col_append_fixed(c->children[0], &t) < 0 || col_append_fixed(c->children[1], &east) < 0)
            return DEC_ERR;
        return col_struct_finish(c);
    }
    case K_TIMESTAMP:
    case K_TIMESTAMPTZ: {
        if (need(c, len, 8) < 0)
            return DEC_ERR;
        int64_t t = rd64(p), v;
        if (t == INT64_MAX || t == INT64_MIN) {
            put(unrep, t == INT64_MAX ? "infinity" : "-infinity");
            return unrep_null(c);
        }
        if (__builtin_add_overflow(t, PG_EPOCH_US, &v)) {
            put_pg_timestamp(unrep, t, c->kind == K_TIMESTAMPTZ);
            return unrep_null(c);
        }
        return col_append_fixed(c, &v);
    }
    case K_INTERVAL: {
        if (need(c, len, 16) < 0)
            return DEC_ERR;
        int64_t us = rd64(p);
        int32_t days = rd32(p + 8), months = rd32(p + 12);
        if (us == INT64_MAX && days == INT32_MAX && months == INT32_MAX) {
            put(unrep, "infinity");
            return unrep_null(c);
        }
        if (us == INT64_MIN && days == INT32_MIN && months == INT32_MIN) {
            put(unrep, "-infinity");
            return unrep_null(c);
        }
        struct { int32_t months, days; int64_t nanos; } v = {months, days, 0};
        if (__builtin_mul_overflow(us, 1000, &v.nanos)) {
            put_pg_interval(unrep, months, days, us);
            return unrep_null(c);
        }
        return col_append_fixed(c, &v);
    }
    case K_UUID:
        if (need(c, len, 16) < 0)
            return DEC_ERR;
        return col_append_fixed(c, p);
    case K_INET:
        if (inet_bin_to_text(p, len, &c->data) < 0)
            return DEC_ERR;
        return col_varbin_finish(c);
    case K_MACADDR:
    case K_MACADDR8:
        if (mac_bin_to_text(p, len, c->kind == K_MACADDR ? 6 : 8, &c->data) < 0)
            return DEC_ERR;
        return col_varbin_finish(c);
    case K_ARRAY:
        return array_bin(c, p, len, unrep);
    default:
        return cdc_fail("column '%s': type '%s' has no binary decoder (read it as text)", c->name,
                        kind_name(c->kind));
    }
}

/* ------------------------------------------------------------------ text dispatch */

int decode_text(Col *c, const char *p, int32_t len) {
    char tmp[80];
    switch (c->kind) {
    case K_BOOL:
        if (len == 1 && (p[0] == 't' || p[0] == 'f'))
            return col_append_bool(c, p[0] == 't');
        return bad_text(c, p, len);
    case K_INT2:
    case K_INT4:
    case K_INT8:
    case K_OID: {
        if (len <= 0 || len >= (int32_t)sizeof tmp)
            return bad_text(c, p, len);
        memcpy(tmp, p, (size_t)len);
        tmp[len] = '\0';
        char *endp;
        errno = 0;
        long long v = c->kind == K_OID ? (long long)strtoull(tmp, &endp, 10) : strtoll(tmp, &endp, 10);
        if (*endp || errno)
            return bad_text(c, p, len);
        if (c->kind == K_INT2) {
            int16_t x = (int16_t)v;
            return col_append_fixed(c, &x);
        }
        if (c->kind == K_INT4 || c->kind == K_OID) {
            int32_t x = (int32_t)v;
            return col_append_fixed(c, &x);
        }
        int64_t x = v;
        return col_append_fixed(c, &x);
    }
    case K_FLOAT4:
    case K_FLOAT8: {
        if (len <= 0 || len >= (int32_t)sizeof tmp)
            return bad_text(c, p, len);
        memcpy(tmp, p, (size_t)len);
        tmp[len] = '\0';
        char *endp;
        if (c->kind == K_FLOAT4) {
            float f = strtof(tmp, &endp);
            if (*endp)
                return bad_text(c, p, len);
            return col_append_fixed(c, &f);
        }
        double d = strtod(tmp, &endp);
        if (*endp)
            return bad_text(c, p, len);
        return col_append_fixed(c, &d);
    }
    case K_DECIMAL:
        return decimal_text(c, p, len);
    case K_NUMERIC_TEXT:
    case K_TEXT:
    case K_JSON:
    case K_JSONB:
    case K_INET:
    case K_MACADDR:
    case K_MACADDR8:
    case K_OTHER:
        return col_append_varbin(c, p, len);
    case K_BYTEA: {
        if (len < 2 || p[0] != '\\' || p[1] != 'x')
            return bad_text(c, p, len);
        if (buf_reserve(&c->data, (len - 2) / 2) < 0)
            return DEC_ERR;
        for (int32_t i = 2; i + 1 < len; i += 2) {
            int hi = hexval(p[i]), lo = hexval(p[i + 1]);
            if (hi < 0 || lo < 0)
                return bad_text(c, p, len);
            c->data.data[c->data.len++] = (uint8_t)(hi << 4 | lo);
        }
        return col_varbin_finish(c);
    }
    case K_UUID: {
        uint8_t u[16];
        int n = 0, hi = -1;
        for (int32_t i = 0; i < len; i++) {
            int h = hexval(p[i]);
            if (h < 0)
                continue;
            if (hi < 0) {
                hi = h;
            } else {
                if (n == 16)
                    return bad_text(c, p, len);
                u[n++] = (uint8_t)(hi << 4 | h);
                hi = -1;
            }
        }
        if (n != 16)
            return bad_text(c, p, len);
        return col_append_fixed(c, u);
    }
    case K_DATE: {
        Cur cur = {p, p + len};
        if (cur_rest_is(&cur, "infinity") || cur_rest_is(&cur, "-infinity"))
            return unrep_null(c);
        int64_t y;
        int m, d;
        if (parse_date(&cur, &y, &m, &d) < 0)
            return bad_text(c, p, len);
        if (parse_bc(&cur))
            y = 1 - y;
        if (cur.p != cur.end)
            return bad_text(c, p, len);
        int32_t v = (int32_t)days_from_civil(y, m, d);
        return col_append_fixed(c, &v);
    }
    case K_TIME: {
        Cur cur = {p, p + len};
        int64_t us;
        if (parse_clock(&cur, &us) < 0 || cur.p != cur.end)
            return bad_text(c, p, len);
        if (us >= US_PER_DAY)
            return unrep_null(c);
        return col_append_fixed(c, &us);
    }
    case K_TIMETZ: {
        Cur cur = {p, p + len};
        int64_t us;
        int32_t east;
        if (parse_clock(&cur, &us) < 0 || parse_offset(&cur, &east) < 0 || cur.p != cur.end)
            return bad_text(c, p, len);
        if (us >= US_PER_DAY)
            return unrep_null(c);
        if (col_append_fixed(c->children[0], &us) < 0 || col_append_fixed(c->children[1], &east) < 0)
            return DEC_ERR;
        return col_struct_finish(c);
    }
    case K_TIMESTAMP:
    case K_TIMESTAMPTZ: {
        Cur cur = {p, p + len};
        if (cur_rest_is(&cur, "infinity") || cur_rest_is(&cur, "-infinity"))
            return unrep_null(c);
        int64_t y, us;
        int m, d;
        int32_t east = 0;
        if (parse_date(&cur, &y, &m, &d) < 0 || !cur_lit(&cur, ' ') || parse_clock(&cur, &us) < 0)
            return bad_text(c, p, len);
        if (c->kind == K_TIMESTAMPTZ && parse_offset(&cur, &east) < 0)
            return bad_text(c, p, len);
        if (parse_bc(&cur))
            y = 1 - y;
        if (cur.p != cur.end)
            return bad_text(c, p, len);
        int64_t days = days_from_civil(y, m, d), v;
        if (__builtin_mul_overflow(days, US_PER_DAY, &v) || __builtin_add_overflow(v, us, &v) ||
            __builtin_sub_overflow(v, (int64_t)east * 1000000, &v))
            return unrep_null(c);
        return col_append_fixed(c, &v);
    }
    case K_INTERVAL:
        return interval_text(c, p, len);
    case K_ARRAY:
        return array_text(c, p, len);
    default:
        return cdc_fail("column '%s': no decoder for kind %d", c->name, c->kind);
    }
}
