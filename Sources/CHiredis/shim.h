#ifndef OUTBOX_CHIREDIS_SHIM_H
#define OUTBOX_CHIREDIS_SHIM_H
#include <hiredis/hiredis.h>
#include <sys/socket.h>

/// `redisContext.errstr` is a `char[128]`, which Swift imports as a 128-tuple.
static inline const char *chiredis_errstr(const redisContext *c) { return c->errstr; }
#endif
