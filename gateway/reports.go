package gateway

import (
	"fmt"
	"strconv"
	"strings"

	"go.uber.org/zap"

	"github.com/filter-milter/filter-milter/milter"
	"github.com/filter-milter/filter-milter/protocol"
)

// The reports, turned into milter macros and session life; the table
// (table.go) says which event goes where.

func (s *session) linkConnect(e protocol.LinkConnect) {
	s.rdns, s.fcrdns = e.RDNS, e.FCRDNS
	if ep, err := protocol.ParseEndpoint(e.Src); err == nil {
		s.client = ep
		if ep.Family != "unix" {
			s.macros.Set(milter.MacroClientAddr, ep.Addr)
			s.macros.Set(milter.MacroClientPort, strconv.Itoa(int(ep.Port)))
		}
	} else {
		s.log.Warn("cannot parse the client address of link-connect", zap.Error(err))
	}
	if ep, err := protocol.ParseEndpoint(e.Dest); err == nil && ep.Family != "unix" {
		s.macros.Set(milter.MacroDaemonAddr, ep.Addr)
		s.macros.Set(milter.MacroIfAddr, ep.Addr)
		s.macros.Set(milter.MacroDaemonPort, strconv.Itoa(int(ep.Port)))
	}
	name := "unknown"
	if e.RDNS != "<unknown>" && e.RDNS != "" {
		s.macros.Set(milter.MacroClientPTR, e.RDNS)
		if e.FCRDNS == "pass" {
			name = e.RDNS
		}
	}
	s.macros.Set(milter.MacroClientName, name)
	s.macros.Set(milter.MacroClientInfo, fmt.Sprintf("%s [%s]", name, s.client.Addr))
	j := s.cfg.Hostname
	if j == "" {
		j = s.g.admd
	}
	s.macros.Set(milter.MacroMTAName, j)
	daemon := s.cfg.DaemonName
	if daemon == "" {
		daemon = j
	}
	s.macros.Set(milter.MacroDaemonName, daemon)
	if s.g.smtpdVersion != "" {
		s.macros.Set(milter.MacroMTAVersion, "OpenSMTPD "+s.g.smtpdVersion)
	}
}

func (s *session) linkGreeting(e protocol.LinkGreeting) {
	if s.cfg.Hostname == "" {
		s.macros.Set(milter.MacroMTAName, e.Hostname)
	}
}

func (s *session) linkTLS(e protocol.LinkTLS) {
	if version, cipher, bits, ok := protocol.SplitTLS(e.Info); ok {
		s.macros.Set(milter.MacroTLSVersion, version)
		s.macros.Set(milter.MacroCipher, cipher)
		s.macros.Set(milter.MacroCipherBits, bits)
	}
}

func (s *session) linkAuth(e protocol.LinkAuth) {
	if e.Result == "pass" {
		s.macros.Set(milter.MacroAuthAuthen, e.Username)
		s.macros.Set(milter.MacroAuthType, authMechanism(s.lastCommand))
		s.authenticated()
	}
}

// linkDisconnect ends the session: smtpd sends nothing more for it.
func (s *session) linkDisconnect(protocol.LinkDisconnect) { s.end = endDisconnect }

func (s *session) txBegin(e protocol.TxBegin) { s.macros.Set(milter.MacroQueueID, e.MsgID) }

func (s *session) protocolClient(e protocol.ProtocolClient) { s.lastCommand = e.Command }

// authMechanism takes the mechanism from "AUTH PLAIN ********".
func authMechanism(cmd string) string {
	f := strings.Fields(cmd)
	if len(f) >= 2 && strings.EqualFold(f[0], "AUTH") {
		return strings.ToUpper(f[1])
	}
	return ""
}
