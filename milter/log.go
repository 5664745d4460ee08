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
		// go-milter formats the milter's bytes into its text (a macro
		// list the milter asked for): a field, which zap escapes, keeps
		// a milter from writing a line of its own into smtpd's log.
		l.Warn("go-milter warning", zap.String("detail", fmt.Sprintf(format, v...)))
	}
}

// log is where the package's own events go (pool endpoints down and up).
var log = zap.NewNop()
