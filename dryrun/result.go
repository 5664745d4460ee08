package dryrun

import (
	"bytes"
	"sync"
	"time"

	"github.com/filter-milter/filter-milter/gateway"
	"github.com/filter-milter/filter-milter/milter"
)

// Result is what test prints, and its JSON form.
type Result struct {
	Message  string       `json:"message"`
	Envelope Envelope     `json:"envelope"`
	Commands []Step       `json:"commands"`
	Milters  []*MilterLog `json:"milters"`
	Verdict  Verdict      `json:"verdict"`
	Changed  bool         `json:"changed"`
	Diff     string       `json:"diff"`
	Log      []string     `json:"log"` // the gateway's log lines, info and up

	delivered bool
	before    [][]byte
	after     [][]byte
	notes     []string
}

type Envelope struct {
	ClientIP   string   `json:"client_ip"`
	ClientName string   `json:"client_name,omitempty"`
	Helo       string   `json:"helo"`
	Auth       string   `json:"auth,omitempty"`
	From       string   `json:"from"`
	Rcpts      []string `json:"rcpts"`
}

// Step is one filter request smtpd would send and the gateway's
// answer to it.
type Step struct {
	Command  string `json:"command"`
	Decision string `json:"decision"` // proceed, reject, disconnect
	Reply    string `json:"reply,omitempty"`
}

// verdict is what becomes of the message.
type Verdict struct {
	Decision string `json:"decision"` // accept, reject, tempfail, disconnect
	Reply    string `json:"reply,omitempty"`
	Stage    string `json:"stage"` // the command that decided: commit for the message itself
}

type MilterLog struct {
	Name          string     `json:"name"`
	Replies       []StageLog `json:"replies"`
	Errors        []ErrorLog `json:"errors,omitempty"`
	Modifications []ModLog   `json:"modifications,omitempty"`
}

// StageLog is a run of identical answers at one stage (one per body
// chunk; the header stage is one answer for all its fields).
type StageLog struct {
	Stage   string  `json:"stage"`
	Verdict string  `json:"verdict"`
	Code    int     `json:"code,omitempty"`
	Reply   string  `json:"reply,omitempty"`
	Count   int     `json:"count"`
	TookMS  float64 `json:"took_ms"`
}

type ErrorLog struct {
	Stage string `json:"stage"`
	Kind  string `json:"kind"`
	Error string `json:"error"`
}

type ModLog struct {
	Kind   string `json:"kind"`
	Name   string `json:"name,omitempty"`
	Value  string `json:"value,omitempty"`
	Index  int    `json:"index,omitempty"`
	Addr   string `json:"addr,omitempty"`
	Args   string `json:"args,omitempty"`
	Reason string `json:"reason,omitempty"`
	Bytes  int    `json:"bytes,omitempty"`
}

// Accepted says whether the message would be queued.
func (r *Result) Accepted() bool { return r.Verdict.Decision == "accept" }

// Delivered says whether the message went through to the end of DATA and
// was accepted, so that there is a message as the milters left it.
func (r *Result) Delivered() bool { return r.delivered }

// After is the message as the milters left it, lines ended by "\n".
func (r *Result) After() []byte {
	var b bytes.Buffer
	for _, l := range r.after {
		b.Write(l)
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// recorder is the gateway observer of the test command.
type recorder struct {
	mu      sync.Mutex
	milters []*MilterLog
	byName  map[string]*MilterLog
}

func newRecorder(ms []milter.Config) *recorder {
	r := &recorder{byName: map[string]*MilterLog{}}
	for _, m := range ms {
		if r.byName[m.Name] == nil {
			l := &MilterLog{Name: m.Name, Replies: []StageLog{}}
			r.milters = append(r.milters, l)
			r.byName[m.Name] = l
		}
	}
	return r
}

func (r *recorder) milter(name string) *MilterLog {
	l := r.byName[name]
	if l == nil {
		l = &MilterLog{Name: name, Replies: []StageLog{}}
		r.milters = append(r.milters, l)
		r.byName[name] = l
	}
	return l
}

func (r *recorder) SessionOpened(string) {}
func (r *recorder) SessionClosed(string) {}

func (r *recorder) MilterReply(_, name string, stage milter.Stage, v milter.Verdict, took time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	l := r.milter(name)
	e := StageLog{Stage: string(stage), Verdict: v.Kind.String(), Code: v.Code, Reply: v.Reply, Count: 1, TookMS: float64(took) / float64(time.Millisecond)}
	if n := len(l.Replies); n > 0 {
		last := &l.Replies[n-1]
		if last.Stage == e.Stage && last.Verdict == e.Verdict && last.Reply == e.Reply {
			last.Count++
			last.TookMS += e.TookMS
			return
		}
	}
	l.Replies = append(l.Replies, e)
}

func (r *recorder) MilterError(_, name string, stage milter.Stage, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	l := r.milter(name)
	l.Errors = append(l.Errors, ErrorLog{Stage: string(stage), Kind: milter.ErrorKind(err), Error: err.Error()})
}

func (r *recorder) Modifications(_, name string, mods []milter.Modification) {
	r.mu.Lock()
	defer r.mu.Unlock()
	l := r.milter(name)
	for _, m := range mods {
		l.Modifications = append(l.Modifications, ModLog{Kind: m.Kind.String(), Name: m.Name, Value: m.Value, Index: m.Index,
			Addr: m.Addr, Args: m.Args, Reason: m.Reason, Bytes: len(m.Body)})
	}
}

func (r *recorder) MessageDone(string, string, string, string, int) {}
func (r *recorder) MessageBuffered(string, int64, bool)             {}
func (r *recorder) Evaluated(string, string, string)                {}

var _ gateway.Observer = (*recorder)(nil)
