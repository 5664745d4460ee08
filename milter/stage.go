package milter

// Stage names a step of the milter conversation as the gateway reports it
// to its observer (metrics labels, the test command, logs): one value per
// SMTP stage and per part of the message.
type Stage string

const (
	StageOpen    Stage = "open"    // connecting and negotiating
	StageConnect Stage = "connect" // SMFIC_CONNECT
	StageHelo    Stage = "helo"    // SMFIC_HELO for HELO
	StageEhlo    Stage = "ehlo"    // SMFIC_HELO for EHLO
	StageMail    Stage = "mail"    // SMFIC_MAIL
	StageRcpt    Stage = "rcpt"    // SMFIC_RCPT
	StageData    Stage = "data"    // SMFIC_DATA
	// The message: header is the header stage as a whole (every
	// SMFIC_HEADER of the message), then SMFIC_EOH, each SMFIC_BODY chunk
	// and SMFIC_BODYEOB with its modifications.
	StageHeader Stage = "header"
	StageEOH    Stage = "eoh"
	StageBody   Stage = "body"
	StageEOM    Stage = "eom"
	// StageMessage is the message as one step, header to end of message,
	// where a pool failover replays it.
	StageMessage Stage = "message"
)
