#ifndef OUTBOX_CLIBPQ_SHIM_H
#define OUTBOX_CLIBPQ_SHIM_H
#include <libpq-fe.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>
#endif
