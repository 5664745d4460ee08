package milter

import (
	"fmt"

	djmilter "github.com/d--j/go-milter"
	"go.uber.org/zap"
)

// SetLogger sends go-milter's own warnings (a DISCARD at connect that it
// ignores, a malformed macro list) to log, so that they reach smtpd's log
// in the same format as everything else instead of through the standard
// library's logger. Call it once, before any session.
func SetLogger(log *zap.Logger) {
	djmilter.LogWarning = func(format string, v ...any) {
		log.Warn("go-milter: " + fmt.Sprintf(format, v...))
	}
}
