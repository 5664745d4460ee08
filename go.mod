module github.com/filter-milter/filter-milter

go 1.26.8

require (
	github.com/d--j/go-milter v0.10.2
	github.com/emersion/go-msgauth v0.7.0
	go.uber.org/zap v1.28.0
)

require (
	github.com/emersion/go-message v0.18.2 // indirect
	go.uber.org/multierr v1.10.0 // indirect
	golang.org/x/crypto v0.31.0 // indirect
	golang.org/x/text v0.36.0 // indirect
)
