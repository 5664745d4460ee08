package milter

import (
	"fmt"

	djmilter "github.com/d--j/go-milter"
	"go.uber.org/zap"
)

// SetLogger sends the package's own events (pool endpoints marked down
// and up) and go-milter's own warnings (a DISCARD at connect that it
// ignores, a malformed macro list) to log, so that they reach smtpd's log
// in the same format as everything else instead of through the standard
// library's logger. Call it once, before any session.
func SetLogger(l *zap.Logger) {
	log = l
	djmilter.LogWarning = func(format string, v ...any) {
		l.Warn("go-milter: " + fmt.Sprintf(format, v...))
	}
}

// log is where the package's own events go (pool endpoints down and up).
var log = zap.NewNop()
