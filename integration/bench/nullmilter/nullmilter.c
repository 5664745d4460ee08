/*
 * nullmilter - a libmilter milter that accepts everything and changes
 * nothing, for filter-milter's benchmarks (integration/bench/bench.sh builds it;
 * it is not committed as a binary):
 *
 *	apt-get install -y libmilter-dev
 *	cc -O2 -o nullmilter nullmilter.c -lmilter -lpthread
 *	./nullmilter unix:/path/null.sock      (or inet:PORT@127.0.0.1)
 *	./nullmilter unix:/path/null.sock eom  (asks for end of message only)
 *
 * Every callback is registered and returns SMFIS_CONTINUE, and no action
 * flag is asked for, so the MTA skips nothing: it sends every stage,
 * every header and the whole body, as a pymilter null milter with every
 * callback would. Each callback does nothing else.
 * A unix socket is made with umask 0, so that smtpd's filter user can
 * connect to it.
 *
 * With "eom" it negotiates every stage away but end of message (the
 * SMFIP_NO* flags), as a milter that only acts on the finished message
 * may; the MTA then has one round trip per message, which shows what
 * filter-milter costs apart from the milter conversation.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <libmilter/mfapi.h>

static sfsistat nm_connect(SMFICTX *ctx, char *host, _SOCK_ADDR *addr) { return SMFIS_CONTINUE; }
static sfsistat nm_helo(SMFICTX *ctx, char *helo) { return SMFIS_CONTINUE; }
static sfsistat nm_envfrom(SMFICTX *ctx, char **argv) { return SMFIS_CONTINUE; }
static sfsistat nm_envrcpt(SMFICTX *ctx, char **argv) { return SMFIS_CONTINUE; }
static sfsistat nm_data(SMFICTX *ctx) { return SMFIS_CONTINUE; }
static sfsistat nm_header(SMFICTX *ctx, char *name, char *value) { return SMFIS_CONTINUE; }
static sfsistat nm_eoh(SMFICTX *ctx) { return SMFIS_CONTINUE; }
static sfsistat nm_body(SMFICTX *ctx, unsigned char *chunk, size_t len) { return SMFIS_CONTINUE; }
static sfsistat nm_eom(SMFICTX *ctx) { return SMFIS_CONTINUE; }
static sfsistat nm_abort(SMFICTX *ctx) { return SMFIS_CONTINUE; }
static sfsistat nm_close(SMFICTX *ctx) { return SMFIS_CONTINUE; }
static sfsistat nm_unknown(SMFICTX *ctx, const char *cmd) { return SMFIS_CONTINUE; }

static sfsistat
nm_negotiate_eom(SMFICTX *ctx, unsigned long f0, unsigned long f1, unsigned long f2, unsigned long f3,
    unsigned long *pf0, unsigned long *pf1, unsigned long *pf2, unsigned long *pf3)
{
	unsigned long want = SMFIP_NOCONNECT | SMFIP_NOHELO | SMFIP_NOMAIL | SMFIP_NORCPT |
	    SMFIP_NOBODY | SMFIP_NOHDRS | SMFIP_NOEOH | SMFIP_NOUNKNOWN | SMFIP_NODATA;

	*pf0 = 0;		/* no actions */
	*pf1 = want & f1;	/* what the MTA offers of it */
	*pf2 = *pf3 = 0;
	return SMFIS_CONTINUE;
}

static struct smfiDesc desc = {
	"nullmilter",	/* filter name */
	SMFI_VERSION,	/* version code */
	0,		/* flags: no actions */
	nm_connect,
	nm_helo,
	nm_envfrom,
	nm_envrcpt,
	nm_header,
	nm_eoh,
	nm_body,
	nm_eom,
	nm_abort,
	nm_close,
	nm_unknown,
	nm_data,
	NULL,		/* negotiate: libmilter's default */
};

int
main(int argc, char **argv)
{
	if (argc == 3 && strcmp(argv[2], "eom") == 0)
		desc.xxfi_negotiate = nm_negotiate_eom;
	else if (argc != 2) {
		fprintf(stderr, "usage: nullmilter unix:/path | inet:port@host [eom]\n");
		return 2;
	}
	umask(0);
	if (smfi_setconn(argv[1]) == MI_FAILURE) {
		fprintf(stderr, "nullmilter: smfi_setconn %s failed\n", argv[1]);
		return 1;
	}
	smfi_setbacklog(1024);
	smfi_settimeout(600);
	if (smfi_register(desc) == MI_FAILURE) {
		fprintf(stderr, "nullmilter: smfi_register failed\n");
		return 1;
	}
	if (smfi_opensocket(1) == MI_FAILURE) { /* 1: remove a stale unix socket */
		fprintf(stderr, "nullmilter: cannot open %s\n", argv[1]);
		return 1;
	}
	return smfi_main() == MI_SUCCESS ? 0 : 1;
}
