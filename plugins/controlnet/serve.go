// serve.go: the plugin's process entry point, called by `sdbridge plugin
// controlnet` (the host re-executes its own binary). It does not return
// until the host closes the connection.
package controlnet

import "github.com/sdbridge/sdbridge/plugins/sdk"

// Serve runs the ControlNet plugin in this process.
func Serve() {
	log := sdk.NewLogger("controlnet")
	sdk.Serve(New(log), sdk.WithLogger(log))
}
