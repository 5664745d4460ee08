package metrics

import (
	"context"
	"errors"
	"net"
	"net/http"
	"sync"
	"time"

	"go.uber.org/zap"
)

// Server serves /metrics and /healthz over HTTP.
type Server struct {
	srv  *http.Server
	log  *zap.Logger
	done chan struct{}

	quit chan struct{}
	once sync.Once

	mu        sync.Mutex
	addr      net.Addr      // set once listening
	listening chan struct{} // closed once listening
}

// RetryInterval is how long Serve waits before it tries a busy address
// again.
var RetryInterval = 5 * time.Second

// Serve serves the observer's metrics at http://addr/metrics (and at /),
// and the health of the milters given to Watch at http://addr/healthz,
// until Close. It never fails: when the address is busy (a filter-milter
// of the smtpd that is restarting may still hold it for its shutdown
// timeout) it logs and tries again every RetryInterval, because a filter
// that exits takes smtpd down with it, and mail matters more than metrics.
func (o *Observer) Serve(addr string, log *zap.Logger) *Server {
	mux := http.NewServeMux()
	mux.Handle("/metrics", o.Handler())
	mux.Handle("/", o.Handler())
	mux.HandleFunc("/healthz", o.serveHealth)
	s := &Server{
		srv:       &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 10 * time.Second},
		log:       log,
		done:      make(chan struct{}),
		quit:      make(chan struct{}),
		listening: make(chan struct{}),
	}
	go s.run(addr)
	return s
}

func (s *Server) run(addr string) {
	defer close(s.done)
	for logged := false; ; {
		ln, err := net.Listen("tcp", addr)
		if err == nil {
			select {
			case <-s.quit:
				_ = ln.Close()
				return
			default:
			}
			s.mu.Lock()
			s.addr = ln.Addr()
			s.mu.Unlock()
			close(s.listening)
			s.log.Info("serving metrics", zap.String("address", ln.Addr().String()))
			if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				s.log.Error("metrics server stopped", zap.Error(err))
			}
			return
		}
		if !logged {
			s.log.Error("cannot listen for metrics; trying again in the background", zap.String("address", addr),
				zap.Duration("every", RetryInterval), zap.Error(err))
			logged = true
		}
		select {
		case <-time.After(RetryInterval):
		case <-s.quit:
			return
		}
	}
}

// Listening is closed once the server listens (Addr is then set).
func (s *Server) Listening() <-chan struct{} { return s.listening }

// Addr is the address listened on, nil until listening.
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}

// Close stops serving.
func (s *Server) Close() error {
	s.once.Do(func() { close(s.quit) })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	<-s.done
	return err
}
