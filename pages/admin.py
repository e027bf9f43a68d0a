from cxrdemo.ui import page_frame

page_frame("admin")
