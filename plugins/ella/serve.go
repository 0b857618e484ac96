// serve.go: the plugin's process entry point, called by `sdbridge plugin
// ella` (the host re-executes its own binary). It does not return until the
// host closes the connection.
package ella

import "github.com/sdbridge/sdbridge/plugins/sdk"

// Serve runs the ELLA plugin in this process.
func Serve() {
	log := sdk.NewLogger("ella")
	sdk.Serve(New(log), sdk.WithLogger(log))
}
