// controlnet_oom.go: the host's out-of-GPU-memory advice on the errors of
// the GPU plugins (ControlNet here, ELLA in ella.go). A plugin's
// cuda.OutOfMemoryError reaches the host as text only (the plugin protocol
// carries messages, not Go errors), so explainPluginOOM recognises its
// message and appends the hint the host gives for its own allocations
// (oomHint, device.go); the plugin's message, with the bytes asked for
// and the free and total memory of its device, stays as it was.
//
// It does not recognise other plugins' wording of an out-of-memory error,
// nor retry anything.
package host

import (
	"errors"
	"strings"

	"github.com/sdbridge/sdbridge/nn"
)

// pluginOOMText is the start of cuda.OutOfMemoryError's message, as a
// plugin's error text carries it.
const pluginOOMText = "out of GPU memory"

// pluginOOMError is a plugin's out-of-GPU-memory error with the host's
// hint; errors.Is and errors.As see the plugin's error through it.
type pluginOOMError struct {
	err  error
	hint string
}

func (e *pluginOOMError) Error() string { return e.err.Error() + "; " + e.hint }

func (e *pluginOOMError) Unwrap() error { return e.err }

// explainPluginOOM adds oomHint for g's activation dtype (g nil: not
// known) to err when its text says a plugin ran out of GPU memory; other
// errors, and errors already explained, come back as they are.
func explainPluginOOM(err error, g *nn.GPU) error {
	if err == nil || !strings.Contains(err.Error(), pluginOOMText) {
		return err
	}
	var done *pluginOOMError
	var host *deviceOOMError
	if errors.As(err, &done) || errors.As(err, &host) {
		return err
	}
	dtype := ""
	if g != nil {
		dtype = DTypeF16
		if g.DType == nn.GPUF32 {
			dtype = DTypeF32
		}
	}
	return &pluginOOMError{err: err, hint: oomHint(dtype)}
}
